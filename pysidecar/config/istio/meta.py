"""Kubernetes object metadata shared by every Istio and Kubernetes kind we read.

Promises:
- `object_meta(doc)` checks the envelope (`apiVersion`, `kind`, `metadata`, `spec`, `status`)
  and returns the kind, name and namespace (default `default`, as `kubectl apply` does).
- `located(meta)` re-raises a ConfigError with the resource named first in the message, so
  an error in a multi-document file still says which object it is about.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pysidecar.common.workload import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE
from pysidecar.config.node import ConfigError, Fields, Node

DOMAIN_SUFFIX = "cluster.local"

METADATA_FIELDS = (
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resource_version",
    "generation",
    "creation_timestamp",
    "deletion_timestamp",
    "deletion_grace_period_seconds",
    "managed_fields",
    "owner_references",
    "finalizers",
    "generate_name",
    "self_link",
)


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    kind: str
    name: str
    namespace: str
    file: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> str:
        """How errors and logs name the resource: `Kind namespace/name`."""
        return f"{self.kind} {self.namespace}/{self.name}"


def ip_or_cidr(node: Node) -> str:
    text = node.string()
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        node.fail(f"expected an IP address or CIDR, got {text!r}")
    return text


def string_map(node: Node | None) -> tuple[tuple[str, str], ...]:
    """A map of string to string (labels, selectors), sorted for stable comparisons."""
    if node is None or node.value is None:
        return ()
    if not isinstance(node.value, dict):
        node.fail("expected a mapping of strings")
    return tuple(sorted((str(k), node.child(str(k), v).string()) for k, v in node.value.items()))


def envelope(doc: Node, *spec_names: str) -> tuple[ObjectMeta, Fields]:
    """The object's metadata and its top-level fields (apiVersion, kind, metadata + `spec_names`)."""
    top = doc.fields("api_version", "kind", "metadata", "status", *spec_names)
    kind = top.require("kind").string()
    md = top.get("metadata")
    mf = md.fields(*METADATA_FIELDS) if md is not None else Fields(doc, {})
    name = mf.opt("name", Node.string, "")
    if not name:
        doc.fail(f"{kind}: metadata.name is required")
    meta = ObjectMeta(
        kind=kind,
        name=name,
        namespace=mf.opt("namespace", Node.string, DEFAULT_NAMESPACE) or DEFAULT_NAMESPACE,
        file=doc.file,
        labels=string_map(mf.get("labels")),
    )
    return meta, top


@contextmanager
def located(meta: ObjectMeta) -> Iterator[None]:
    """Prefix any ConfigError raised inside with the resource it concerns."""
    try:
        yield
    except ConfigError as e:
        if e.message.startswith(meta.ref):
            raise
        raise ConfigError(e.file, e.path, f"{meta.ref}: {e.message}") from e


def resolve_host(host: str, namespace: str) -> str:
    """istiod's ResolveShortnameToFQDN: `reviews` in `default` → reviews.default.svc.cluster.local."""
    if "." in host or host.startswith("*") or not host:
        return host
    return f"{host}.{namespace}.svc.{DOMAIN_SUFFIX}"
