"""Kubernetes Secrets as gateway credentials: what istiod's credentialName finds over SDS.

Promises:
- `secret(doc)` reads a v1 Secret: `data` (base64) and `stringData` (plain text, winning over
  `data` as the API server does), remembering each key's YAML path for later errors.
- `credential(secrets, name, namespace, mutual)` is istiod's credential lookup: a
  `kubernetes.io/tls`-shaped Secret (`tls.crt`, `tls.key`, optional `ca.crt`) or a generic one
  (`cert`, `key`, optional `cacert`); for MUTUAL the CA comes from the Secret itself or from a
  separate `<name>-cacert` Secret (`cacert` or `ca.crt`). A Secret in the Gateway's namespace
  wins over one of the same name elsewhere (the seed creates them in istio-system while the
  Gateway lives in default; a pod-less pysidecar has no namespace of its own to prefer).
- Every value comes back as a `Pem`: the text and where it came from (file and YAML path), so
  a certificate that does not load is reported at that place.
- Pure: no files are written; the data path builds its TLS contexts from these strings.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from pysidecar.config.istio.meta import ObjectMeta, envelope, located
from pysidecar.config.node import Node

CERT_KEYS = (("tls.crt", "tls.key", "ca.crt"), ("cert", "key", "cacert"))
CA_SUFFIX = "-cacert"


@dataclass(frozen=True, slots=True)
class Pem:
    text: str
    file: str
    path: str


@dataclass(frozen=True, slots=True)
class Secret:
    meta: ObjectMeta
    type: str
    data: tuple[tuple[str, Pem], ...]

    def get(self, key: str) -> Pem | None:
        return dict(self.data).get(key)


@dataclass(frozen=True, slots=True)
class Credential:
    """A server certificate and key, and the CA that verifies clients (MUTUAL)."""

    cert: Pem
    key: Pem
    ca: Pem | None


def secret(doc: Node) -> Secret:
    meta, top = envelope(doc, "data", "string_data", "type", "immutable")
    with located(meta):
        out: dict[str, Pem] = {}
        if (data := top.get("data")) is not None and data.value is not None:
            if not isinstance(data.value, dict):
                data.fail("expected a mapping of key to base64 value")
            for k, v in data.value.items():
                n = data.child(str(k), v)
                try:
                    text = base64.b64decode(n.string(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    n.fail("expected base64 of UTF-8 text (a PEM block)")
                out[str(k)] = Pem(text, n.file, n.path)
        if (sd := top.get("string_data")) is not None and sd.value is not None:
            if not isinstance(sd.value, dict):
                sd.fail("expected a mapping of key to text")
            for k, v in sd.value.items():
                n = sd.child(str(k), v)
                out[str(k)] = Pem(n.string(), n.file, n.path)
        top.opt("immutable", Node.boolean, False)
        return Secret(meta, top.opt("type", Node.string, "Opaque"), tuple(out.items()))


def _named(secrets: Sequence[Secret], name: str, namespace: str) -> Secret | None:
    found = [s for s in secrets if s.meta.name == name]
    local = [s for s in found if s.meta.namespace == namespace]
    return (local or found)[0] if found else None


class CredentialError(Exception):
    """The credential cannot be made from the Secrets given; the message says why."""


def credential(secrets: Sequence[Secret], name: str, namespace: str, mutual: bool) -> Credential:
    s = _named(secrets, name, namespace)
    if s is None:
        known = ", ".join(sorted({x.meta.name for x in secrets})) or "none"
        raise CredentialError(f"no Secret named {name!r} (Secrets given: {known})")
    for cert_key, key_key, ca_key in CERT_KEYS:
        cert, key = s.get(cert_key), s.get(key_key)
        if cert is None or key is None:
            continue
        ca = s.get(ca_key)
        if ca is None and mutual:
            extra = _named(secrets, name + CA_SUFFIX, namespace)
            ca = (extra.get("cacert") or extra.get("ca.crt")) if extra is not None else None
            if ca is None:
                raise CredentialError(
                    f"MUTUAL needs a CA: {s.meta.ref} has no {ca_key!r} and there is no Secret "
                    f"{name + CA_SUFFIX!r} with 'cacert'"
                )
        return Credential(cert, key, ca if mutual else None)
    keys = ", ".join(k for k, _ in s.data) or "none"
    raise CredentialError(f"{s.meta.ref} has neither tls.crt + tls.key nor cert + key (keys: {keys})")
