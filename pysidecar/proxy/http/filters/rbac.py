"""envoy.filters.http.rbac: Istio's AuthorizationPolicy on an HTTP request (proxy/rbac.py decides).

Promises (Envoy 1.40's RBAC filter):
- The request's attributes: its headers by lower-case name plus `:method`, `:path` (with the
  query), `:authority`; url_path without the query; the downstream peer (source ip, our
  address and port), the TLS SNI and the client certificate's URI SAN when the connection is
  mutual TLS.
- Denied: a local reply 403 `RBAC: access denied`, response-code details
  `rbac_access_denied_matched_policy[<policy>]` (`[none]` when an ALLOW filter matched
  nothing), counted in `http.<stat_prefix>.rbac.denied`; allowed: `rbac.allowed`, the chain
  goes on. A LOG filter (Istio's AUDIT) never denies: `rbac.logged` / `rbac.not_logged`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.model.http import HttpFilter
from pysidecar.observe.stats import RbacStats
from pysidecar.proxy.rbac import Attributes, decide

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.headers import Headers

DENIED_BODY = b"RBAC: access denied"
DENIED_DETAILS = "rbac_access_denied_matched_policy[{}]"


def request_attributes(stream: ActiveStream) -> Attributes:
    conn = stream.conn
    headers: dict[str, str] = {}
    for name, value in stream.headers:
        key = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        headers[key] = f"{headers[key]},{v}" if key in headers else v
    path = stream.path
    headers[":method"] = stream.method.decode("latin-1")
    headers[":path"] = path
    headers[":authority"] = stream.host
    tls = conn.tls
    return Attributes(
        source_ip=conn.peer_ip,
        destination_ip=conn.destination.address,
        destination_port=conn.destination.port,
        principal=tls.peer_uri if tls is not None and tls.mutual else None,
        sni=stream.info.requested_server_name or "",
        headers=headers,
        url_path=path.split("?", 1)[0],
    )


class RbacFilter:
    """Not a PassThroughFilter subclass: that class may be compiled (pysidecar.native) and an
    interpreted class cannot inherit from a compiled one; the chain needs only the protocol."""

    __slots__ = ("config", "encodes", "touches_noted")

    def __init__(self, config: HttpFilter) -> None:
        assert config.rbac is not None
        self.config = config
        self.encodes = False
        self.touches_noted = False

    def encode_headers(self, stream: ActiveStream, headers: Headers) -> Headers:
        return headers

    def decode_headers(self, stream: ActiveStream) -> bool:
        rules = self.config.rbac
        assert rules is not None
        conn = stream.conn
        stats = conn.worker.stats.block(RbacStats, conn.stats.scope + "rbac.")
        allowed, policy = decide(rules.rules, request_attributes(stream))
        if rules.rules.action == "LOG":
            if policy is not None:
                stats.logged += 1
            else:
                stats.not_logged += 1
            return True
        if allowed:
            stats.allowed += 1
            return True
        stats.denied += 1
        stream.local_reply(403, DENIED_BODY, (), DENIED_DETAILS.format(policy or "none"))
        return False
