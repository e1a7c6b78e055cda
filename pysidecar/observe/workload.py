"""Who this sidecar serves: the workload metadata Istio's standard metrics label with.

Promises:
- `WorkloadMetadata.from_env(environ, labels)` reads what Istio's injector gives a sidecar:
  ISTIO_META_WORKLOAD_NAME, POD_NAMESPACE, ISTIO_META_CLUSTER_ID, ISTIO_META_MESH_ID and the pod
  labels (`app`, `version`, `service.istio.io/canonical-name|revision`, `app.kubernetes.io/*`),
  the labels from the downward-API file (/etc/istio/pod/labels, `key="value"` lines).
- Anything missing is `unknown`, as in Istio's metrics; canonical service and revision fall
  back the way Istio's do (workload name, `latest`) only when the workload itself is known.
- Pure: `load()` is the one place that touches the environment and the file system.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

UNKNOWN = "unknown"
LABELS_FILE = "/etc/istio/pod/labels"


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


def load() -> WorkloadMetadata:
    try:
        with open(LABELS_FILE) as f:
            labels = parse_labels(f.read())
    except OSError:
        labels = {}
    return WorkloadMetadata.from_env(os.environ, labels)
