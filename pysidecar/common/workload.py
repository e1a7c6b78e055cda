"""Who this sidecar serves: the workload metadata Istio's standard metrics label with.

Promises:
- `WorkloadMetadata.from_env(environ, labels)` reads what Istio's injector gives a sidecar:
  ISTIO_META_WORKLOAD_NAME, POD_NAMESPACE, ISTIO_META_CLUSTER_ID, ISTIO_META_MESH_ID and the pod
  labels (`app`, `version`, `service.istio.io/canonical-name|revision`, `app.kubernetes.io/*`),
  the labels from the downward-API file (/etc/istio/pod/labels, `key="value"` lines).
- Anything missing is `unknown`, as in Istio's metrics; canonical service and revision fall
  back the way Istio's do (workload name, `latest`) only when the workload itself is known.
- `pod_labels(environ, labels_file_text)` is the pod's labels, first found: ISTIO_METAJSON_LABELS
  (Istio's env var, a JSON object), then the downward-API file; `parse_label_flag("k=v,k=v")`
  reads the `--workload-labels` flag, which wins over both (`resolve_labels`). The labels pick
  the Services this sidecar serves inbound (config/istio/inbound.py). The pod's namespace
  (`--namespace`, else POD_NAMESPACE, else `default`: `resolve_namespace`) decides which hosts
  answer to their bare short name.
- Pure but for `load()` and `read_labels()`, the places that touch the environment and the
  file system.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # workers import this module: not argparse
    import argparse

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
DEFAULT_NAMESPACE = "default"  # Kubernetes' (config/istio/meta.py names it for Istio's YAML)
LABELS_FILE = "/etc/istio/pod/labels"
METAJSON_LABELS = "ISTIO_METAJSON_LABELS"


@dataclass(frozen=True, slots=True)
class WorkloadMetadata:
    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    canonical_service: str = UNKNOWN
    canonical_revision: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    cluster: str = UNKNOWN
    principal: str = UNKNOWN  # no mTLS here: the peer identity is never known

    @classmethod
    def from_env(cls, environ: Mapping[str, str], labels: Mapping[str, str]) -> WorkloadMetadata:
        def first(*values: str | None) -> str:
            return next((v for v in values if v), UNKNOWN)

        workload = first(environ.get("ISTIO_META_WORKLOAD_NAME"))
        known = workload != UNKNOWN
        return cls(
            workload=workload,
            namespace=first(environ.get("POD_NAMESPACE")),
            canonical_service=first(
                labels.get("service.istio.io/canonical-name"),
                labels.get("app.kubernetes.io/name"),
                labels.get("app"),
                workload if known else None,
            ),
            canonical_revision=first(
                labels.get("service.istio.io/canonical-revision"),
                labels.get("app.kubernetes.io/version"),
                labels.get("version"),
                "latest" if known else None,
            ),
            app=first(labels.get("app"), labels.get("app.kubernetes.io/name")),
            version=first(labels.get("version"), labels.get("app.kubernetes.io/version")),
            cluster=first(environ.get("ISTIO_META_CLUSTER_ID")),
        )


def parse_labels(text: str) -> dict[str, str]:
    """The downward-API labels file: `key="value"` per line."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def parse_metajson_labels(text: str) -> dict[str, str] | None:
    """ISTIO_METAJSON_LABELS: a JSON object of the pod's labels; None when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}


def parse_label_flag(text: str) -> dict[str, str]:
    """`--workload-labels app=web,version=v1`; an empty value means no labels at all."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def pod_labels(environ: Mapping[str, str], labels_file_text: str | None) -> dict[str, str]:
    """The pod's labels, first found: ISTIO_METAJSON_LABELS, then the downward-API file."""
    if (raw := environ.get(METAJSON_LABELS)) is not None:
        found = parse_metajson_labels(raw)
        if found is not None:
            return found
        log.warning("%s is not a JSON object of labels; ignored", METAJSON_LABELS)
    return parse_labels(labels_file_text) if labels_file_text is not None else {}


def read_labels() -> dict[str, str]:
    """`pod_labels` of this process's environment and the downward-API file, if readable."""
    try:
        with open(LABELS_FILE) as f:
            text: str | None = f.read()
    except OSError:
        text = None
    return pod_labels(os.environ, text)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """`--workload-labels` and `--namespace`, for the commands that compile Istio YAML (run,
    envoy-config)."""
    parser.add_argument(
        "--workload-labels", metavar="K=V,...", default=None,
        help="the labels of the pod this sidecar serves: Services selecting them get inbound chains "
        f"(default: ${METAJSON_LABELS}, else {LABELS_FILE})",
    )  # fmt: skip
    parser.add_argument(
        "--namespace", metavar="NS", default=None,
        help="the namespace of the pod this sidecar serves: its hosts are reachable by short name "
        "(`httpbin` for httpbin.NS.svc.cluster.local; default: $POD_NAMESPACE, else default)",
    )  # fmt: skip
    parser.add_argument(
        "--cert-dir", metavar="DIR", default=os.environ.get("PYSIDECAR_CERT_DIR") or None,
        help="the workload certificate, Istio's file-mounted layout: cert-chain.pem, key.pem, root-cert.pem "
        "(default: $PYSIDECAR_CERT_DIR, else /etc/certs when present; named explicitly, the files must load)",
    )  # fmt: skip


def resolve_namespace(flag: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The flag's namespace when given, else Istio's POD_NAMESPACE, else `default`."""
    return flag or environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE


# pilot-agent's proxy types: `proxy sidecar` (the default) and `proxy router` (a gateway).
PROXY_MODES = ("sidecar", "router")


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    """`--mode sidecar|router`, for the commands that compile Istio YAML (run, envoy-config)."""
    parser.add_argument(
        "--mode", choices=PROXY_MODES, default="sidecar",
        help="sidecar (default), or router: an Istio gateway (Gateways selecting --workload-labels, "
        "e.g. istio=ingressgateway), like `pilot-agent proxy router`",
    )  # fmt: skip


def resolve_labels(flag: str | None) -> dict[str, str]:
    """The flag's labels when given (raises ValueError when malformed), else `read_labels()`."""
    return parse_label_flag(flag) if flag is not None else read_labels()


def load() -> WorkloadMetadata:
    return WorkloadMetadata.from_env(os.environ, read_labels())
