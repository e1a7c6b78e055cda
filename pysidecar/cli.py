"""The `pysidecar` command: one subcommand per job, each living in the module that owns it.

Each subcommand module exposes `add_arguments(parser)` and `main(args) -> int` and is imported
only when its subcommand runs, so `pysidecar init` in an init container never imports the proxy.
Exit status 2 means bad usage or bad configuration, as for argparse itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pysidecar.proxy.supervisor", "run the sidecar proxy (Envoy or Istio YAML, or embedded defaults)"),
    "init": ("pysidecar.interception.cli", "install Istio's iptables interception rules (istio-iptables flags)"),
    "demo": ("pysidecar.demo", "watch the sidecar intercept real traffic in throw-away lab pods"),
    "inject": ("pysidecar.inject.cli", "add the sidecar and its init container to Kubernetes YAML (like istioctl kube-inject)"),
    "wait": ("pysidecar.inject.wait", "wait until the sidecar is ready (:15021/healthz/ready); the postStart hook"),
    "envoy-config": ("pysidecar.config.export", "write the config as an Envoy v3 bootstrap (to run real Envoy on it)"),
    "lab": ("pysidecar.lab.cli", "lab pods to explore by hand: lab up | shell POD | list | down"),
    "native": ("pysidecar.native_build", "compile the data path with mypyc (build), or say if the build is fresh (check, status)"),
    "proxy-config": ("pysidecar.observe.proxy_config", "show a running proxy's listeners, routes, clusters, endpoints like istioctl"),
    "explain": ("pysidecar.explain.cli", "the decision trace of one connection or request: iptables rule, listener, chain, route, cluster, endpoint"),
}


class _Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> _Command:
    return cast(_Command, importlib.import_module(COMMANDS[name][0]))


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pysidecar", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (_module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            _load(name).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return _load(args.command).main(args)
