"""`pysidecar envoy-config`: the model written out as an Envoy v3 bootstrap.

Promises:
- `to_envoy(bootstrap)` returns a plain dict that real Envoy accepts (`envoy --mode validate`)
  and that behaves as pysidecar does on the same config: static listeners and clusters with
  every field the model carries, inline route configurations, Istio's retry host predicate,
  fault filter config per route, and the sidecar's own ports (:15090 Prometheus stats,
  :15021 readiness) as listeners onto the admin, the way Istio's bootstrap serves them.
- Only the model is read, so Envoy YAML, Istio YAML and the embedded sidecar export alike; the
  renderers (common/envoy_json.py) are the ones the admin's /config_dump uses.
- `pysidecar envoy-config -c PATH... [-o FILE] [--workload-labels K=V,...] [--namespace NS]
  [--interception-mode M] [--mode router]` prints (or writes) the YAML, inbound chains included
  for the Services selecting the labels (taken as `pysidecar run` takes them), or a gateway's
  listeners in router mode; a config error exits 2 with the file, YAML path and resource.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from pysidecar.common import workload
from pysidecar.common.envoy_json import admin_port_resources, cluster, listener
from pysidecar.common.envoy_json import socket_address as address
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.config.sidecar import add_interception_mode_argument, resolve_interception_mode
from pysidecar.model import Bootstrap


def to_envoy(b: Bootstrap, proxy_type: str = "sidecar") -> dict[str, Any]:
    """`proxy_type`: the node id's first field, `sidecar` or `router` (Istio's gateways)."""
    listeners = [listener(x) for x in b.listeners]
    clusters = [cluster(c) for c in b.clusters]
    out: dict[str, Any] = {"node": {"id": f"{proxy_type}~127.0.0.1~pysidecar.default~default.svc.cluster.local", "cluster": "pysidecar"}}
    if b.admin is not None:
        out["admin"] = {"address": address(b.admin.address)}
        own_listeners, own_clusters = admin_port_resources(b)
        listeners += own_listeners
        clusters += own_clusters
    out["static_resources"] = {"listeners": listeners, "clusters": clusters}
    return out


def dump(b: Bootstrap, proxy_type: str = "sidecar") -> str:
    return yaml.safe_dump(to_envoy(b, proxy_type), sort_keys=False, default_flow_style=False)


# -- command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config-path", "--config", dest="config", action="append", default=[], metavar="PATH",
        help="files or directories of Envoy or Istio YAML (default: the embedded standard sidecar)",
    )  # fmt: skip
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    workload.add_workload_arguments(parser)
    workload.add_mode_argument(parser)
    add_interception_mode_argument(parser)


def main(args: argparse.Namespace) -> int:
    try:
        labels = workload.resolve_labels(args.workload_labels)
    except ValueError as e:
        print(f"pysidecar: --workload-labels: {e}", file=sys.stderr)
        return 2
    try:
        interception = resolve_interception_mode(args.interception_mode, os.environ)
    except ValueError as e:
        print(f"pysidecar: {e}", file=sys.stderr)
        return 2
    try:
        namespace = workload.resolve_namespace(args.namespace)
        bootstrap = load(args.config, labels, namespace=namespace, interception_mode=interception, mode=args.mode, cert_dir=args.cert_dir)
        text = dump(bootstrap, args.mode)
    except ConfigError as e:
        print(f"pysidecar: configuration error: {e}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
