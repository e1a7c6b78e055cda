"""use_remote_address: what an edge proxy (an Istio gateway's HCM) does to a request's headers.

Promises (checked against Envoy 1.40 running the gateway config istiod-style):
- x-forwarded-for: the downstream peer's address is appended (`1.2.3.4,198.18.0.2`), or becomes
  the header when the client sent none (xff_num_trusted_hops 0: the peer is the client).
- x-forwarded-proto: the downstream connection's scheme, whatever the client said.
- A peer outside Envoy's internal ranges (loopback, RFC 1918, fd00::/8) is external: it gets
  `x-envoy-external-address: <peer>` and, preserve_external_request_id being false, a fresh
  x-request-id; an internal peer gets `x-envoy-internal: true`.
- Pure: `edge_request(clean, noted, ...)` takes and returns the scan's forwardable headers and
  noted values (proxy/http/headers.py); the stream applies it only when the HCM says so.
"""

from __future__ import annotations

import functools
import ipaddress

from pysidecar.proxy.http.headers import Headers

# Envoy's Network::Utility::isInternalAddress.
_INTERNAL = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128", "fd00::/8")
)
_EDGE_SET = (b"x-forwarded-for", b"x-forwarded-proto", b"x-envoy-external-address", b"x-request-id")


@functools.lru_cache(maxsize=1024)
def is_internal(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr.version == n.version and addr in n for n in _INTERNAL)


def edge_request(clean: Headers, noted: dict[bytes, bytes], peer_ip: str, scheme: bytes) -> tuple[Headers, dict[bytes, bytes]]:
    peer = peer_ip.encode("latin-1")
    xff = b",".join([v for n, v in clean if n == b"x-forwarded-for"] + [peer])
    out = [h for h in clean if h[0] not in _EDGE_SET]
    out += [(b"x-forwarded-for", xff), (b"x-forwarded-proto", scheme)]
    noted = {**noted, b"x-forwarded-proto": scheme}
    if is_internal(peer_ip):
        out.append((b"x-envoy-internal", b"true"))
        rid = noted.get(b"x-request-id")
        if rid is not None:
            out.append((b"x-request-id", rid))
    else:
        out.append((b"x-envoy-external-address", peer))
        noted.pop(b"x-request-id", None)  # the stream makes a new one
    return out, noted
