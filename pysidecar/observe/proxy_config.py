"""`pysidecar proxy-config listeners|routes|clusters|endpoints`: a running proxy's config,
as `istioctl proxy-config` shows it.

Promises:
- Reads the proxy's admin port (`--admin`, default 127.0.0.1:15000): /config_dump for
  listeners, routes and clusters, /clusters?format=json for endpoints. Works against real
  Envoy's admin as well.
- `-o short` (default) prints istioctl's table; `-o json` / `-o yaml` print the selected
  resources with istioctl's camelCase keys. `--port` filters listeners, `--name` routes,
  `--fqdn` clusters, `--cluster` endpoints.
- Exit status 1 when the admin port cannot be read, with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

import yaml

from pysidecar.observe import proxy_config_tables as t

KINDS = {"listeners": "listeners", "listener": "listeners", "routes": "routes", "route": "routes",
         "clusters": "clusters", "cluster": "clusters", "endpoints": "endpoints", "endpoint": "endpoints"}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(KINDS), help="what to show")
    parser.add_argument("--admin", default="127.0.0.1:15000", help="the proxy's admin address (host:port)")
    parser.add_argument("-o", "--output", choices=["short", "json", "yaml"], default="short")
    parser.add_argument("--port", type=int, default=None, help="listeners: only this port")
    parser.add_argument("--name", default=None, help="routes: only this route configuration")
    parser.add_argument("--fqdn", default=None, help="clusters: only this service FQDN")
    parser.add_argument("--cluster", default=None, help="endpoints: only this cluster")


def fetch(admin: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def render(kind: str, args: argparse.Namespace, dump: dict[str, Any]) -> str:
    """The text to print for `kind` from a config dump (or /clusters JSON for endpoints)."""
    if args.output != "short":
        if kind == "endpoints":
            data: Any = dump.get("cluster_statuses", [])
        else:
            data = t.resources(dump, kind)
            if kind == "listeners" and args.port is not None:
                data = [x for x in data if x.get("address", {}).get("socket_address", {}).get("port_value") == args.port]
            if kind == "routes" and args.name is not None:
                data = [x for x in data if x.get("name") == args.name]
        data = t.camel(data)
        if args.output == "json":
            return json.dumps(data, indent=2) + "\n"
        return str(yaml.safe_dump(data, sort_keys=False))
    if kind == "listeners":
        return t.table(t.LISTENER_HEADER, t.listener_rows(dump, args.port))
    if kind == "routes":
        return t.table(t.ROUTE_HEADER, t.route_rows(dump, args.name))
    if kind == "clusters":
        return t.table(t.CLUSTER_HEADER, t.cluster_rows(dump, args.fqdn))
    return t.table(t.ENDPOINT_HEADER, t.endpoint_rows(dump, args.cluster))


def main(args: argparse.Namespace) -> int:
    kind = KINDS[args.kind]
    path = "/clusters?format=json" if kind == "endpoints" else "/config_dump"
    try:
        dump = fetch(args.admin, path)
    except (OSError, urllib.error.URLError, ValueError) as e:
        print(f"pysidecar proxy-config: cannot read http://{args.admin}{path}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(render(kind, args, dump))
    return 0
