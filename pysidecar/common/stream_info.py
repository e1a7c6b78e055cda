"""StreamInfo: what happened to one HTTP request or one TCP connection, as Envoy records it.

Promises: the data path fills one `StreamInfo` per HTTP request / TCP connection as it goes;
the access log, Istio's standard metrics and the stats all read the finished record, so they
can never disagree. Field names follow Envoy's access log command operators
(%RESPONSE_FLAGS% → response_flags, %UPSTREAM_HOST% → upstream_host, ...). Unknown is None
(printed as `-`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class StreamInfo:
    start_time: float = field(default_factory=time.time)
    # "HTTP/1.1", "HTTP/2"; None for a TCP connection (Envoy prints "-").
    protocol: str | None = None
    method: str | None = None
    path: str | None = None
    original_path: str | None = None  # x-envoy-original-path, set when a rewrite happened
    authority: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    x_forwarded_for: str | None = None
    response_code: int = 0  # 0 for TCP, as Envoy prints
    response_flags: list[str] = field(default_factory=list)
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    end_time: float | None = None
    upstream_service_time_ms: int | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None
    listener_name: str | None = None
    # A gRPC request (content-type application/grpc) and the grpc-status it ended with
    # (response trailers, a trailers-only response, or a local reply's): Istio's
    # request_protocol="grpc" and grpc_response_status.
    grpc: bool = False
    grpc_status: int | None = None
    # The downstream TLS session (proxy/peer_tls.DownstreamTls) and the upstream's URI SAN:
    # %DOWNSTREAM_PEER_URI_SAN%, %UPSTREAM_PEER_URI_SAN%, Istio's principals.
    downstream_tls: Any = None
    upstream_peer_uri_san: str | None = None
    # Headers for %REQ(X)% / %RESP(X)% beyond the named fields above (keys lower-case); the HTTP
    # path may leave them None: the common headers have fields of their own.
    request_headers: Mapping[str, str] | None = None
    response_headers: Mapping[str, str] | None = None

    @property
    def duration_ms(self) -> int | None:
        if self.end_time is None:
            return None
        # Whole microseconds first, so float noise (3.9999996 ms) does not lose a millisecond.
        return round((self.end_time - self.start_time) * 1e6) // 1000

    @property
    def downstream_peer_uri_san(self) -> str | None:
        return None if self.downstream_tls is None else self.downstream_tls.peer_uri

    @property
    def downstream_local_uri_san(self) -> str | None:
        return None if self.downstream_tls is None else self.downstream_tls.local_uri

    @property
    def response_flags_text(self) -> str:
        return ",".join(self.response_flags) if self.response_flags else "-"

    def finish(self) -> None:
        if self.end_time is None:
            self.end_time = time.time()
