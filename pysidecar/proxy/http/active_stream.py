"""The connection manager's stream (Envoy's ConnectionManagerImpl::ActiveStream): one request
from its decoded head to its last response byte, whatever the codec.

Promises:
- `start()` does what the connection manager does before the filters (Envoy's
  decodeHeaders): one pass over the request headers (hop-by-hop and control headers out, the
  few it decides on noted), the edge headers (use_remote_address), x-request-id, 100-continue,
  400 for a request without host, `header_validation.hcm_path_reply` (a fragment, `*`), the route (`route_table.resolve_route`, require_tls
  included), and the base of the upstream request's headers; then it runs the HTTP filter
  chain (`filter.py`: fault, lua, ..., router last). A filter that stops the chain resumes it
  with `continue_decoding`.
- Its lifecycle is `stream_state`'s table: only this class advances `state`; codecs and
  filters read it (`state & RESPONSE_STARTED`, ...).
- Responses go to the codec through the declared `DownstreamCodec` interface: the router's
  upstream headers get the connection manager's treatment here (hop-by-hop stripped, server,
  date, the route's response headers, the encoder filters' additions) in Envoy 1.40's order.
- Local replies (`local_reply`, `send_local_reply`) are answered as Envoy's sendLocalReply:
  the route's response headers, the encoder filters, the codec's framing; the stream ends.
- The request body is buffered here while no upstream takes it (queued, a filter holding the
  request, connecting), bounded by the listener's buffer limit (reading paused beyond it, and
  a body over it is not kept for a retry).
- Exactly one StreamInfo is filled per request, and the codec is told once, through
  `stream_done`, when the stream is over (again when its request is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.common.stream_info import StreamInfo
from pysidecar.proxy.http import grpc
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http import stream_state as ss
from pysidecar.proxy.http.edge import edge_request
from pysidecar.proxy.http.header_validation import hcm_path_reply
from pysidecar.proxy.http.headers import (
    Headers,
    get,
    http_date,
    scan_request,
    set_in_place,
    strip_hop_by_hop_rare,
    tokens,
)
from pysidecar.proxy.http.request_id import request_id
from pysidecar.proxy.http.response_head import upstream_response_head
from pysidecar.proxy.http.route_table import resolve_route
from pysidecar.proxy.http.stream_state import RESPONSE_DONE, RESPONSE_STARTED, STARTED
from pysidecar.proxy.http.xfcc import forward_client_cert
from pysidecar.proxy.tracing.http_tracer import finish_request, trace_request

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    from pysidecar.proxy.http.codec import DownstreamCodec, UpstreamCodec
    from pysidecar.proxy.http.headers import HeaderOps
    from pysidecar.proxy.http.route_table import CompiledRoute
    from pysidecar.proxy.http.router_filter import Router
    from pysidecar.proxy.tracing.zipkin import Span

# Connection tokens that are about the connection itself, not names of headers to drop.
_CONNECTION_OWN = frozenset({b"close", b"keep-alive", b"upgrade"})


class ActiveStream:
    __slots__ = (
        "body_bytes",
        "body_parts",
        "body_waiter",
        "chunked_in",
        "chunked_out",
        "close_after",
        "conn",
        "content_length",
        "filter_index",
        "filter_timer",
        "has_body",
        "head_out",
        "head_request",
        "headers",
        "host",
        "http10",
        "idle_timeout",
        "info",
        "keep_alive",
        "method",
        "nominated",
        "noted",
        "path",
        "paused_for_body",
        "request_trailers",
        "response_ops",
        "retain",
        "route",
        "router",
        "span",
        "state",
        "target",
        "tls_redirect",
        "tunnel",
        "up_headers",
        "upgrade",
        "upgrade_value",
        "url",
        "vhost",
    )

    def __init__(self, conn: DownstreamCodec) -> None:
        self.conn = conn
        self.url = b""
        self.method = b""
        self.headers: Headers = []
        self.http10 = False
        self.keep_alive = True
        self.upgrade = False
        self.head_request = False
        self.info = StreamInfo()
        self.state = ss.RECEIVING
        self.body_parts: list[bytes] = []
        self.body_bytes = 0
        self.retain = True  # the body so far is kept (for a retry)
        self.paused_for_body = False
        self.request_trailers: Headers | None = None  # HTTP/2 request trailers, for the upstream
        self.chunked_in = False
        self.has_body = False  # a body follows the head (content-length > 0 or chunked)
        self.chunked_out = False  # codec state: the response is framed as chunked
        self.head_out = b""  # codec state: a response head held for its first body bytes
        self.close_after = False
        self.response_ops: HeaderOps = ()
        self.route: CompiledRoute | None = None
        self.span: Span | None = None  # the zipkin span of a traced request (proxy/tracing)
        self.router: Router | None = None
        # A filter that needs the whole request body (Lua's body()): called at its end.
        self.body_waiter: Callable[[], None] | None = None
        self.filter_timer: asyncio.TimerHandle | None = (
            None  # a filter holding the request (fault delay): its timer
        )
        self.tunnel = False
        self.idle_timeout = conn.cfg.config.stream_idle_timeout

    # == the request: what the connection manager does before the filters =====================
    def start(self) -> None:
        """Decode the request head and run the HTTP filter chain (routing, then attempts)."""
        self.state = ss.advance(self.state, ss.START)
        conn = self.conn
        cfg = conn.cfg
        info = self.info
        headers = self.headers
        url = self.url
        target = url
        # One pass: the forwardable headers and the few this stream decides on.
        clean, noted = scan_request(headers)
        if cfg.edge:
            clean, noted = edge_request(clean, noted, conn.peer_ip, conn.scheme)
            info.x_forwarded_for = (get(clean, b"x-forwarded-for") or b"").decode("latin-1")
        clean = forward_client_cert(clean, cfg.xfcc_mode, cfg.xfcc_details, conn.tls)
        host_b = noted.get(b"host", b"")
        if url[:7].lower() == b"http://":  # absolute-form: the URL's authority wins
            rest = url[7:]
            slash = rest.find(b"/")
            host_b, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        self.target = target
        self.noted = noted
        info.grpc = grpc.is_grpc(get(headers, b"content-type"))
        path = self.path = target.decode("latin-1")
        host = self.host = host_b.decode("latin-1")
        if info.protocol is None:  # an HTTP/2 connection sets its own
            info.protocol = "HTTP/1.0" if self.http10 else "HTTP/1.1"
        info.method = self.method.decode("latin-1")
        info.path = path
        info.authority = host or None
        ua = noted.get(b"user-agent")
        info.user_agent = ua.decode("latin-1") if ua is not None else None
        rid = noted.get(b"x-request-id")
        new_rid = rid is None
        if rid is None:
            rid = request_id()
            headers.append((b"x-request-id", rid))  # route header matchers see it
        info.request_id = rid.decode("latin-1")
        self.upgrade_value = noted.get(b"upgrade") if self.upgrade else None
        nominated = tokens(noted.get(b"connection"))
        if nominated:
            if b"close" in nominated:
                self.close_after = True
            nominated -= _CONNECTION_OWN
        expect = noted.get(b"expect")
        te = noted.get(b"transfer-encoding")
        self.chunked_in = te is not None and b"chunked" in te.lower()
        cl = self.content_length = noted.get(b"content-length")
        self.has_body = self.chunked_in or (cl is not None and cl != b"0")
        if (
            expect is not None
            and not cfg.config.proxy_100_continue
            and expect.lower() == b"100-continue"
        ):
            conn.encode_continue(self)  # as Envoy's decodeHeaders: before routing, local replies
        if not host_b:  # Envoy's 400 (HTTP/1.0 too: no default_host_for_http_10), and a close
            self.close_after = True
            self.send_local_reply(lr.MISSING_HOST)
            return
        refused = hcm_path_reply(target)
        if refused is not None:  # a fragment (400, and a close) or `*` (404)
            self.close_after = self.close_after or refused[0] == 400
            self.local_reply(refused[0], b"", (), refused[1])
            return
        route = self.route_request(headers)
        # The base of the upstream request's headers, in Envoy's order: the client's headers
        # in place (host first), then what the connection manager adds (x-forwarded-proto, a
        # generated x-request-id, the decorator); the filters and the router add theirs after.
        up: Headers = [(b"host", host_b), *clean]
        if nominated or expect is not None or b"te" in noted:
            up = strip_hop_by_hop_rare(
                up, nominated, expect is not None and cfg.config.proxy_100_continue
            )
        if b"x-forwarded-proto" not in noted:
            up.append((b"x-forwarded-proto", conn.scheme))
        if new_rid:
            up.append((b"x-request-id", rid))
        if cfg.decorate and route is not None and route.route.decorator is not None:
            set_in_place(
                up, noted, b"x-envoy-decorator-operation", route.route.decorator.operation.encode()
            )
        if cfg.config.tracing is not None:
            up = trace_request(self, cfg.config.tracing, up, cfg.egress)
        self.up_headers = up
        self.filter_index = 0
        self.continue_decoding()

    def route_request(self, headers: Headers) -> CompiledRoute | None:
        """Choose the route for host, path and `headers` (again when a filter changed them:
        Envoy's clearRouteCache)."""
        conn = self.conn
        self.vhost, route, self.tls_redirect = resolve_route(
            conn.cfg.table, self.host, self.path, headers, self.noted.get(b"x-forwarded-proto") or conn.scheme
        )
        self.route = route
        if route is not None:
            self.info.route_name = route.route.name or None
            self.response_ops = route.response_ops
        return route

    def continue_decoding(self) -> None:
        """Run the decoder filters from `filter_index` until one stops the chain (the router
        always does: the request is its from there)."""
        filters = self.conn.cfg.filters
        i = self.filter_index
        while i < len(filters):
            self.filter_index = i + 1
            if not filters[i].decode_headers(self):
                return
            i += 1

    def decode_body(self, data: bytes) -> None:
        n = len(data)
        self.info.bytes_received += n
        if self.state & RESPONSE_DONE:
            return  # answered already; the rest of the body is read and dropped
        router = self.router
        if router is not None and router.encode_upstream_data(data):
            if self.retain:
                self.body_parts.append(data)
                self.body_bytes += n
                if self.body_bytes > self.conn.buffer_limit:
                    self.retain = False  # too big to replay: no retry for this request
                    self.body_parts = []
            return
        self.body_parts.append(data)
        self.body_bytes += n
        if self.body_waiter is not None and self.body_bytes > self.conn.buffer_limit:
            # A filter buffering the whole body past the limit: Envoy's 413.
            self.body_waiter = None
            self.send_local_reply(lr.PAYLOAD_TOO_LARGE)
            return
        if self.body_bytes > self.conn.buffer_limit and not self.paused_for_body:
            self.retain = False
            self.paused_for_body = True
            self.conn.pause_stream(self)

    def body_taken(self) -> None:
        """The router wrote the buffered body upstream: reading goes on."""
        if not self.retain:
            self.body_parts = []
        if self.paused_for_body:
            self.paused_for_body = False
            self.conn.resume_stream(self)

    def decode_complete(self) -> None:
        before = self.state
        state = self.state = ss.advance(before, ss.REQUEST_END)
        if before & ss.REQUEST_DONE:
            return  # ends once (HTTP/2: END_STREAM after trailers)
        if state & RESPONSE_DONE:
            self.conn.stream_done(self)
            return
        if self.body_waiter is not None:
            waiter, self.body_waiter = self.body_waiter, None
            waiter()
            return
        router = self.router
        if router is not None:
            router.decode_complete(self.has_body)

    def downstream_reset(self) -> None:
        """The client went away before the stream finished (or before it started: queued)."""
        if self.state & RESPONSE_DONE:
            return
        self.info.response_flags.append(lr.DC)
        self.conn.stats.downstream_rq_rx_reset += 1
        if not self.state & STARTED:  # nothing to stop: ended and accounted here
            self.abandon()
            return self.conn.stream_done(self)
        self.drop_upstream()
        self.finish()

    def downstream_tunnel_data(self, data: bytes) -> None:
        self.info.bytes_received += len(data)
        up = self.upstream()
        if up is not None:
            up.write(data)

    # == what codecs ask of the stream's upstream (flow control, tunnels) ======================
    def upstream(self) -> UpstreamCodec | None:
        """The upstream connection of the attempt in progress, when one is attached."""
        router = self.router
        return router.upstream() if router is not None else None

    def drop_upstream(self) -> None:
        if self.filter_timer is not None:
            self.filter_timer.cancel()
            self.filter_timer = None
        if self.router is not None:
            self.router.drop_upstream()

    def arm_route_timer(self) -> None:
        if self.router is not None:
            self.router.arm_route_timer()

    def cancel_route_timer(self) -> None:
        if self.router is not None:
            self.router.cancel_route_timer()

    # == the response ==========================================================================
    def encode_continue(self) -> None:
        """The upstream's `100 Continue`: the client's, under proxy_100_continue."""
        if self.conn.cfg.config.proxy_100_continue and not self.state & RESPONSE_STARTED:
            self.conn.encode_continue(self)

    def encode_headers(self, status: int, headers: Headers, service_time_ms: int) -> None:
        """The upstream's response head, as the connection manager passes it on
        (`response_head.upstream_response_head`), to the codec."""
        conn = self.conn
        info = self.info
        self.state = ss.advance(self.state, ss.RESPONSE_START)
        info.response_code = status
        info.response_code_details = "via_upstream"
        info.upstream_service_time_ms = service_time_ms
        if info.grpc:  # a trailers-only response carries its grpc-status in the head
            info.grpc_status = grpc.grpc_status(headers)
        out, has_length = upstream_response_head(self, status, headers, service_time_ms)
        if status == 101:
            self.tunnel = True
        # The codec frames it (HTTP/1: connection, chunking, the head held for the body).
        conn.encode_headers(self, status, out, has_length)
        if self.tunnel:
            self.cancel_route_timer()  # an upgraded stream has no response end to time
            conn.start_tunnel(self)

    def flush_head(self) -> None:
        """Write a response head the codec still holds (see DownstreamCodec.encode_headers)."""
        if self.head_out:
            self.conn.encode_flush(self)

    def encode_data(self, data: bytes) -> None:
        self.info.bytes_sent += len(data)
        self.conn.encode_data(self, data)

    def encode_end(self) -> None:
        if self.state & RESPONSE_DONE:
            return
        self.conn.encode_end(self)
        self.finish()

    def encode_trailers(self, trailers: Headers) -> None:
        """The upstream's response trailers end the response (gRPC's grpc-status rides here)."""
        if self.state & RESPONSE_DONE:
            return
        if self.info.grpc:
            self.info.grpc_status = grpc.grpc_status(trailers)
        self.conn.encode_trailers(self, trailers)
        self.finish()

    def encode_tunnel_data(self, data: bytes) -> None:
        self.info.bytes_sent += len(data)
        self.conn.write(data)

    def tunnel_closed(self) -> None:
        self.close_after = True
        self.conn.close_when_flushed()
        self.finish()

    def reset(self, flag: str | None = None) -> None:
        """The response cannot go on (mid-body timeout, upstream reset): reset it, end."""
        if flag is not None:
            self.info.response_flags.append(flag)
        self.conn.reset_stream(self)
        self.finish()

    # == endings ================================================================================
    def send_local_reply(self, reply: lr.LocalReply) -> None:
        self.local_reply(reply.status, reply.body, reply.flags, reply.details, reply.grpc_status)

    def local_reply(
        self, status: int, body: bytes, flags: tuple[str, ...], details: str, grpc_status: int | None = None
    ) -> None:
        """Answer the request ourselves (Envoy's sendLocalReply) and finish the stream."""
        info = self.info
        self.drop_upstream()
        if flags:
            info.response_flags += flags
        info.response_code_details = details
        if info.grpc:
            # Envoy answers a gRPC request with a trailers-only response: 200, grpc-status
            # mapped from the status, the body as grpc-message (checked on 1.40).
            info.response_code = 200
            info.grpc_status = grpc.http_to_grpc_status(status) if grpc_status is None else grpc_status
            head = grpc.local_reply_headers(info.grpc_status, body, http_date(), self.conn.cfg.server)
            self.conn.encode_local_reply(self, 200, b"", head[1:])
        else:
            info.response_code = status
            info.bytes_sent += 0 if self.head_request else len(body)
            self.conn.encode_local_reply(
                self, status, body, self.local_reply_headers(status, body, self.response_ops)
            )
        self.state = ss.advance(self.state, ss.RESPONSE_START)
        self.finish()

    def local_reply_headers(self, status: int, body: bytes, route_ops: HeaderOps) -> Headers:
        """A local reply's headers before the codec's framing: `local_reply_head`, the encoder
        filters' additions, date, server (Envoy 1.40's order)."""
        cfg = self.conn.cfg
        headers = lr.local_reply_head(body, route_ops)
        for f in cfg.encoders:
            headers = f.encode_headers(self, headers)
        headers.append((b"date", http_date()))
        headers.append((b"server", cfg.server))
        return headers

    def stream_idle_timeout(self) -> None:
        """Nothing moved for the stream idle timeout: Envoy's 504 `stream timeout` once the
        request is in (408 while it is still arriving, which also ends the connection), a
        reset once the response started; flag SI."""
        self.info.response_flags.append(lr.SI)
        if self.tunnel:  # an idle tunnel is closed, both ways
            self.drop_upstream()
            self.tunnel_closed()
            return
        if self.state & RESPONSE_STARTED:
            self.drop_upstream()
            self.reset()
            return
        self.send_local_reply(lr.stream_idle_reply(self.state & ss.REQUEST_DONE != 0))

    def abandon(self) -> None:
        """The connection answered or dropped this stream itself (a codec error): it is over."""
        self.state = ss.advance(self.state, ss.ABANDON)
        self.close_after = True

    def finish(self) -> None:
        state = self.state
        if state & RESPONSE_DONE:
            return
        self.state = ss.advance(state, ss.RESPONSE_END)
        if self.filter_timer is not None:
            self.filter_timer.cancel()
            self.filter_timer = None
        if self.router is not None:
            self.router.release()
        if self.paused_for_body:
            self.paused_for_body = False
            self.conn.resume_stream(self)
        if self.span is not None:
            finish_request(self)
        self.conn.stream_done(self)

    @property
    def started(self) -> bool:
        return self.state & STARTED != 0

    @property
    def request_done(self) -> bool:
        return self.state & ss.REQUEST_DONE != 0

    @property
    def response_started(self) -> bool:
        return self.state & RESPONSE_STARTED != 0

    @property
    def response_done(self) -> bool:
        return self.state & RESPONSE_DONE != 0
