"""`pysidecar explain DEST [--host H --path P -H 'k: v'] [--sni S] [--inbound] [--iptables FILE|-|live]`:
the decision trace of one connection or request through the given config (loaded as `run`
loads it), from the pod's iptables rules to the endpoint or the local reply.

Promises: prints one line per step (`what: decision and why`); exit 0, or 2 for a config error
(file, YAML path) or a bad argument. `--iptables live` reads `iptables-save -t nat` of the
current network namespace (run it in the pod's: `ip netns exec POD pysidecar explain ...`). `--live N` prints the last N
requests of a running proxy with their traces, from its admin's /explain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request

from pysidecar.common import workload
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import add_interception_mode_argument, resolve_interception_mode
from pysidecar.explain.decisions import Question, explain
from pysidecar.explain.iptables_trace import Packet, trace_nat
from pysidecar.model import SocketAddress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("destination", nargs="?", help="IP:PORT the connection goes to (the original destination)")
    parser.add_argument("--live", type=int, metavar="N", help="instead: the last N requests of a running proxy, from its admin")
    parser.add_argument("--admin", default="127.0.0.1:15000", help="--live: the proxy's admin address (host:port)")
    parser.add_argument(
        "-c", "--config-path", "--config", dest="config", action="append", default=[], metavar="PATH",
        help="files or directories of Envoy or Istio YAML (default: the embedded standard sidecar)",
    )  # fmt: skip
    parser.add_argument("--host", help="an HTTP request with this Host (else a plain TCP connection)")
    parser.add_argument("--path", default="/", help="the request path (default /)")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a request header")
    parser.add_argument("--sni", help="a TLS ClientHello with this server name")
    parser.add_argument("--inbound", action="store_true", help="a connection arriving at the pod (PREROUTING)")
    parser.add_argument("--iptables", metavar="FILE|-|live", help="the pod's `iptables-save -t nat` text")
    parser.add_argument("--uid", type=int, default=0, help="the uid of the process opening the connection (default 0)")
    parser.add_argument("--source", help="the packet's source address (for -s rules)")
    workload.add_workload_arguments(parser)
    workload.add_mode_argument(parser)
    add_interception_mode_argument(parser)


def _destination(text: str) -> SocketAddress:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected IP:PORT, got {text!r}")
    return SocketAddress(host.strip("[]"), int(port))


def _rules(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    if source == "live":
        return subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    with open(source, encoding="utf-8") as f:
        return f.read()


def _live(admin: str, n: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{admin}/explain?n={n}", timeout=10) as resp:
            traces = json.loads(resp.read())
    except (OSError, ValueError) as e:
        print(f"pysidecar explain: cannot read http://{admin}/explain: {e}", file=sys.stderr)
        return 1
    for t in traces:
        o = t["observed"]
        what = f"{o['method']} {o['host']}{o['path']}" if o.get("method") else "TCP"
        print(f"== {what} to {o['destination']} from {o['downstream']}: {o['response_code']} {o['response_flags']}"
              f" {o['details'] or ''} via {o['listener']} route {o['route'] or '-'} cluster {o['cluster'] or '-'}"
              f" host {o['upstream_host'] or '-'}")  # fmt: skip
        for step, text in t["steps"]:
            print(f"   {step}: {text}")
    return 0


def main(args: argparse.Namespace) -> int:
    if args.live is not None:
        return _live(args.admin, args.live)
    if args.destination is None:
        print("pysidecar explain: give IP:PORT (or --live N)", file=sys.stderr)
        return 2
    try:
        dest = _destination(args.destination)
        headers = tuple((k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in args.header))
        labels = workload.resolve_labels(args.workload_labels)
        interception = resolve_interception_mode(args.interception_mode, os.environ)
    except ValueError as e:
        print(f"pysidecar explain: {e}", file=sys.stderr)
        return 2
    try:
        namespace = workload.resolve_namespace(args.namespace)
        bootstrap = load(args.config, labels, namespace=namespace, interception_mode=interception, mode=args.mode)
    except ConfigError as e:
        print(f"pysidecar: configuration error: {e}", file=sys.stderr)
        return 2
    nat = None
    if args.iptables:
        try:
            text = _rules(args.iptables)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"pysidecar explain: cannot read the iptables rules: {e}", file=sys.stderr)
            return 2
        nat = trace_nat(text, Packet(dest.address, dest.port, not args.inbound, args.uid, args.uid, args.source))
    q = Question(dest, args.host, args.path, headers, args.sni, (), args.inbound)
    for what, text in explain(bootstrap, q, nat).steps:
        print(f"{what}: {text}")
    return 0
