"""StreamInfo: what happened to one HTTP request or one TCP connection, as Envoy records it.

Promises: the data path fills one `StreamInfo` per HTTP request / TCP connection as it goes;
the access log, Istio's standard metrics and the stats all read the finished record, so they
can never disagree. Field names follow Envoy's access log command operators
(%RESPONSE_FLAGS% → response_flags, %UPSTREAM_HOST% → upstream_host, ...). Unknown is None
(printed as `-`).
- A plain class, not a dataclass, though it is built like one (keyword arguments, every field
  optional): the data path makes one per request and mypyc compiles this `__init__`, where a
  dataclass's generated one stays interpreted (it was ~3% of a worker's CPU under load).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class StreamInfo:
    __slots__ = (
        "authority", "bytes_received", "bytes_sent", "connection_termination_details",
        "downstream_local_address", "downstream_remote_address", "downstream_tls", "end_time",
        "grpc", "grpc_status", "listener_name", "method", "original_path", "path", "protocol",
        "request_headers", "request_id", "requested_server_name", "response_code",
        "response_code_details", "response_flags", "response_headers", "route_name", "start_time",
        "upstream_cluster", "upstream_host", "upstream_local_address", "upstream_peer_uri_san",
        "upstream_service_time_ms", "upstream_transport_failure_reason", "user_agent",
        "x_forwarded_for",
    )  # fmt: skip

    def __init__(
        self,
        *,
        start_time: float | None = None,  # None: now
        # "HTTP/1.1", "HTTP/2"; None for a TCP connection (Envoy prints "-").
        protocol: str | None = None,
        method: str | None = None,
        path: str | None = None,
        original_path: str | None = None,  # x-envoy-original-path, set when a rewrite happened
        authority: str | None = None,
        user_agent: str | None = None,
        request_id: str | None = None,
        x_forwarded_for: str | None = None,
        response_code: int = 0,  # 0 for TCP, as Envoy prints
        response_flags: list[str] | None = None,  # None: a fresh empty list
        response_code_details: str | None = None,
        connection_termination_details: str | None = None,
        upstream_transport_failure_reason: str | None = None,
        bytes_received: int = 0,
        bytes_sent: int = 0,
        end_time: float | None = None,
        upstream_service_time_ms: int | None = None,
        upstream_host: str | None = None,
        upstream_cluster: str | None = None,
        upstream_local_address: str | None = None,
        downstream_local_address: str | None = None,
        downstream_remote_address: str | None = None,
        requested_server_name: str | None = None,
        route_name: str | None = None,
        listener_name: str | None = None,
        # A gRPC request (content-type application/grpc) and the grpc-status it ended with
        # (response trailers, a trailers-only response, or a local reply's): Istio's
        # request_protocol="grpc" and grpc_response_status.
        grpc: bool = False,
        grpc_status: int | None = None,
        # The downstream TLS session (proxy/peer_tls.DownstreamTls) and the upstream's URI SAN:
        # %DOWNSTREAM_PEER_URI_SAN%, %UPSTREAM_PEER_URI_SAN%, Istio's principals.
        downstream_tls: Any = None,
        upstream_peer_uri_san: str | None = None,
        # Headers for %REQ(X)% / %RESP(X)% beyond the named fields above (keys lower-case); the
        # HTTP path may leave them None: the common headers have fields of their own.
        request_headers: Mapping[str, str] | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.start_time = time.time() if start_time is None else start_time
        self.protocol = protocol
        self.method = method
        self.path = path
        self.original_path = original_path
        self.authority = authority
        self.user_agent = user_agent
        self.request_id = request_id
        self.x_forwarded_for = x_forwarded_for
        self.response_code = response_code
        self.response_flags: list[str] = [] if response_flags is None else response_flags
        self.response_code_details = response_code_details
        self.connection_termination_details = connection_termination_details
        self.upstream_transport_failure_reason = upstream_transport_failure_reason
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.end_time = end_time
        self.upstream_service_time_ms = upstream_service_time_ms
        self.upstream_host = upstream_host
        self.upstream_cluster = upstream_cluster
        self.upstream_local_address = upstream_local_address
        self.downstream_local_address = downstream_local_address
        self.downstream_remote_address = downstream_remote_address
        self.requested_server_name = requested_server_name
        self.route_name = route_name
        self.listener_name = listener_name
        self.grpc = grpc
        self.grpc_status = grpc_status
        self.downstream_tls = downstream_tls
        self.upstream_peer_uri_san = upstream_peer_uri_san
        self.request_headers = request_headers
        self.response_headers = response_headers

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
