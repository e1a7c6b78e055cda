"""`pysidecar lab up|down|shell|list`: the demo lab from a terminal.

    pysidecar lab up                      build psc-demo (client behind the sidecar + fake hosts)
    pysidecar lab shell client            interactive bash inside the client pod
    pysidecar lab shell client -- curl -s http://httpbin.org/headers
    pysidecar lab list                    pods, addresses, names; other labs and their owners
    pysidecar lab down                    remove it all

Exit status: 0 done, 1 the lab could not be built or removed, 2 bad usage (e.g. unknown pod).
"""

from __future__ import annotations

import argparse
import os
import sys

from pysidecar.lab import demo, registry
from pysidecar.lab.netns import LabError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="create the demo lab psc-demo")
    up.add_argument("--no-proxy", action="store_true", help="no interception, no proxy in client")
    up.add_argument(
        "--proxy-config", metavar="PATH", help="config for `pysidecar run -c PATH` in client"
    )
    sub.add_parser("down", help="remove the demo lab")
    shell = sub.add_parser("shell", help="run bash (or COMMAND) inside a demo pod")
    shell.add_argument("pod")
    shell.add_argument("command", nargs=argparse.REMAINDER, help="command instead of bash")
    sub.add_parser("list", help="show the demo pods and any other labs")


def main(args: argparse.Namespace) -> int:
    action: str = args.lab_command
    if action == "up":
        return _up(args)
    if action == "down":
        errors = demo.down()
        for e in errors:
            print(f"pysidecar lab down: {e}", file=sys.stderr)
        return 1 if errors else 0
    if action == "shell":
        return _shell(args.pod, [c for c in args.command if c != "--"] if args.command else [])
    return _list()


def _up(args: argparse.Namespace) -> int:
    proxy_args = ["run", "--concurrency", "1"]
    if args.proxy_config:
        proxy_args += ["-c", os.path.abspath(args.proxy_config)]
    try:
        demo.up(proxy=not args.no_proxy, proxy_args=proxy_args)
    except LabError as e:
        print(f"pysidecar lab up: {e}", file=sys.stderr)
        return 1
    _list()
    print("\ntry: pysidecar lab shell client -- curl -s http://httpbin.org/headers")
    return 0


def _shell(pod: str, command: list[str]) -> int:
    st = demo.state()
    if st is None:
        print("pysidecar lab shell: no demo lab; run `pysidecar lab up`", file=sys.stderr)
        return 2
    if pod not in st["pods"]:
        print(
            f"pysidecar lab shell: no pod {pod!r}; pods: {', '.join(st['pods'])}", file=sys.stderr
        )
        return 2
    ns = st["pods"][pod]["ns"]
    argv = command or ["bash", "--norc", "-i"]
    env = {**os.environ, "PS1": f"[{pod} {st['pods'][pod]['ip']}] \\w\\$ "}
    # `ip netns exec` also bind-mounts the pod's /etc/netns hosts file over /etc/hosts.
    os.execvpe("ip", ["ip", "netns", "exec", ns, *argv], env)


def _list() -> int:
    st = demo.state()
    if st is None:
        print("demo lab: not up")
    else:
        print(f"demo lab {st['labid']}  (logs: {st['logdir']}, proxy pid: {st['proxy_pid']})")
        for name, pod in st["pods"].items():
            names = " ".join(pod["hostnames"])
            print(f"  {name:<10} {pod['ns']:<18} {pod['ip']:<15} {pod['ip6'] or '-':<12} {names}")
    others = [i for i in registry.lab_ids() if i != demo.DEMO_ID]
    for labid in others:
        owner = registry.read_owner(labid)
        status = (
            "unknown owner"
            if owner is None
            else (f"owner pid {owner.pid} " + ("alive" if owner.alive() else "gone (stale)"))
        )
        print(
            f"lab {labid}: {', '.join(registry.lab_namespaces(labid)) or 'no namespaces'}; {status}"
        )
    return 0
