"""One HTTP request through the router: route, upstream attempts, retries, timeouts, response.

Promises:
- `ActiveStream.start()` routes the request (virtual host, route, cluster) or answers it
  locally (404 NR, 503 NC/UH, direct_response, 403 for an unconfigured upgrade); otherwise it
  builds the upstream head once (Envoy's request headers, route header mutations, rewrites)
  and runs attempts against the cluster's per-host pools.
- Bodies stream both ways without being gathered: request chunks go upstream as they arrive
  (buffered only while connecting, bounded by the listener's buffer limit, and kept for a
  retry only while under that limit); response chunks go downstream as they arrive, re-framed
  as chunked when the upstream did not give a length.
- Timeouts and retries are Envoy's: the route timeout (from the end of the request) covers
  every attempt → 504 `upstream request timeout` (UT); per_try_timeout ends one attempt;
  retries follow retry_on with jittered backoff; a connect failure that is not retried gives
  503 with Envoy's body (UF, plus URX once retries ran out).
- Exactly one StreamInfo is filled per request, and the connection is told once, through
  `HttpConnection.stream_done`, when the stream is over.
- Timers are loop handles, never tasks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import TYPE_CHECKING

from pysidecar.model.http import RedirectAction
from pysidecar.observe.stats import ClusterHttpStats
from pysidecar.observe.stream_info import StreamInfo
from pysidecar.proxy.cluster_manager import ClusterRuntime
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http.codec import CHUNK_END, CRLF, encode_request_head, http_date
from pysidecar.proxy.http.edge import edge_request
from pysidecar.proxy.http.header_validation import hcm_path_reply, upstream_head_problem
from pysidecar.proxy.http.headers import (
    APPEND,
    HAS_DATE,
    HAS_LENGTH,
    HAS_SERVER,
    RESPONSE_NOTED,
    Headers,
    apply_ops,
    get,
    replace_header,
    scan_request,
    scan_response,
    strip_request,
    tokens,
    touches,
)
from pysidecar.proxy.http.intercept import OVERLOADED, intercept, retry_admitted
from pysidecar.proxy.http.pool import HostPool, UpstreamConnection
from pysidecar.proxy.http.retry import (
    OVERFLOW,
    PER_TRY_TIMEOUT,
    PROTOCOL_ERROR,
    backoff,
    other_host,
    retriable_reset,
    retriable_status,
)
from pysidecar.proxy.http.router import CompiledRoute, redirect_location
from pysidecar.proxy.http.xfcc import forward_client_cert
from pysidecar.proxy.lb import Host
from pysidecar.proxy.loop_detect import LOOP_DETAILS, LOOP_STATUS, forwarding_loop, loop_message

if TYPE_CHECKING:
    from pysidecar.model.http import RetryPolicy
    from pysidecar.proxy.http.conn_manager import HttpConnection
    from pysidecar.proxy.http.h2_conn import Http2Connection

log = logging.getLogger(__name__)

# require_tls ALL's answer: the same request over https, 301 (Envoy's SslRedirectRoute).
HTTPS_REDIRECT = RedirectAction(https_redirect=True, response_code=301)


def _host_key(h: Host) -> tuple[str, int]:
    return h.key


@functools.lru_cache(maxsize=4096)
def _fmt(host: tuple[str, int]) -> str:
    """`ip:port` / `[ip6]:port`, cached: the same few upstream hosts are formatted per request."""
    return f"[{host[0]}]:{host[1]}" if ":" in host[0] else f"{host[0]}:{host[1]}"


# A UUID4 per request without a request id. Like Envoy (RandomGeneratorImpl::uuid), random
# bytes are drawn from the OS in batches: os.urandom per request was a getrandom(2) per request.
_UUID_BATCH = 256 * 16
_V4_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V4_BITS = (0x8000 << 48) | (4 << 76)  # RFC 4122 variant, version 4


class _RandomBatch:
    __slots__ = ("data", "pos")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0

    def take16(self) -> bytes:
        pos = self.pos
        if pos >= len(self.data):
            self.data = os.urandom(_UUID_BATCH)
            pos = 0
        self.pos = pos + 16
        return self.data[pos : pos + 16]


_random = _RandomBatch()


def request_id() -> bytes:
    """A fresh x-request-id: a random (version 4) UUID in its text form."""
    h = ((int.from_bytes(_random.take16()) & _V4_MASK) | _V4_BITS).to_bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


class ActiveStream:
    __slots__ = (
        "attempt",
        "attempt_open",
        "attempt_started",
        "body_bytes",
        "body_parts",
        "chunked_in",
        "chunked_out",
        "close_after",
        "cluster",
        "conn",
        "connecting",
        "has_body",
        "head_out",
        "head_request",
        "headers",
        "http10",
        "idle_timeout",
        "info",
        "keep_alive",
        "lb_host",
        "method",
        "paused_for_body",
        "per_try_timer",
        "policy",
        "pool",
        "request_done",
        "response_done",
        "response_ops",
        "response_started",
        "retain",
        "retried",
        "retries_left",
        "retry_timer",
        "route",
        "rq_stats",
        "started",
        "timed_out",
        "timer",
        "tried_hosts",
        "tunnel",
        "up_headers",
        "up_target",
        "upgrade",
        "upstream",
        "url",
    )

    def __init__(self, conn: HttpConnection | Http2Connection) -> None:
        self.conn = conn
        self.url = b""
        self.method = b""
        self.headers: Headers = []
        self.http10 = False
        self.keep_alive = True
        self.upgrade = False
        self.head_request = False
        self.info = StreamInfo()
        self.started = False
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.body_parts: list[bytes] = []
        self.body_bytes = 0
        self.retain = True
        self.paused_for_body = False
        self.chunked_in = False
        self.has_body = False  # a body follows the head (content-length > 0 or chunked)
        self.chunked_out = False
        self.head_out = b""
        self.close_after = False
        self.route: CompiledRoute | None = None
        self.cluster: ClusterRuntime | None = None
        self.rq_stats: ClusterHttpStats | None = None
        self.pool: HostPool | None = None
        self.lb_host: Host | None = None  # the attempt's host, counted in Host.active
        self.upstream: UpstreamConnection | None = None
        self.connecting: UpstreamConnection | None = None
        self.attempt_open = False  # between start_attempt and _end_attempt (upstream_rq_active)
        self.up_headers: Headers = []
        self.up_target = b""
        self.response_ops: tuple[tuple[int, bytes, bytes], ...] = ()
        self.policy: RetryPolicy | None = None
        self.attempt = 0
        self.retries_left = 0
        self.retried = False
        self.attempt_started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.per_try_timer: asyncio.TimerHandle | None = None
        self.retry_timer: asyncio.TimerHandle | None = None
        self.timed_out = False
        self.tunnel = False
        self.idle_timeout = conn.cfg.config.stream_idle_timeout
        self.tried_hosts: tuple[tuple[str, int], ...] = ()  # grown on retries only

    # == downstream events ===================================================================
    def start(self, fault_done: bool = False) -> None:
        """Route the request and start the first attempt (or answer it locally).
        `fault_done`: run again after a fault delay, the delay not to be drawn twice."""
        self.started = True
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
        path = target.decode("latin-1")
        host = host_b.decode("latin-1")
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
        upgrade_value = noted.get(b"upgrade") if self.upgrade else None
        nominated = tokens(noted.get(b"connection"))
        if nominated:
            if b"close" in nominated:
                self.close_after = True
            nominated -= _CONNECTION_OWN
        expect = noted.get(b"expect")
        te = noted.get(b"transfer-encoding")
        self.chunked_in = te is not None and b"chunked" in te.lower()
        cl = noted.get(b"content-length")
        self.has_body = self.chunked_in or (cl is not None and cl != b"0")
        if (
            expect is not None
            and not cfg.config.proxy_100_continue
            and expect.lower() == b"100-continue"
        ):
            conn.encode_continue(self)  # as Envoy's decodeHeaders: before routing, local replies

        if not host_b:  # Envoy's 400 (HTTP/1.0 too: no default_host_for_http_10), and a close
            self.close_after = True
            self._local(400, b"", None, "missing_host_header")
            return
        refused = hcm_path_reply(target)
        if refused is not None:  # a fragment (400, and a close) or `*` (404)
            self.close_after = self.close_after or refused[0] == 400
            self._local(refused[0], b"", None, refused[1])
            return
        vh = cfg.table.virtual_host(host)
        route = (
            vh.select(path, _as_dict(strip_request(headers)) if vh.needs_headers else None)
            if vh is not None
            else None
        )
        if vh is not None and vh.vhost.require_tls and (noted.get(b"x-forwarded-proto") or conn.scheme) != b"https":
            # Envoy answers require_tls before any route is looked at.
            location = redirect_location(HTTPS_REDIRECT, host, path)
            self.response_ops = ((APPEND, b"location", location.encode("latin-1")),)
            self._local(301, b"", None, "direct_response")
            return
        if route is None:
            conn.stats.no_route += 1
            self._local(404, b"", lr.NR, "route_not_found")
            return
        info.route_name = route.route.name or None
        self.response_ops = route.response_ops
        if route.intercepts and intercept(self, route, host, path, fault_done):
            return  # delayed (start runs again), aborted or redirected
        self.route = route
        action = route.action
        idle = action.idle_timeout if action is not None else None
        if idle is not None and idle != self.idle_timeout:
            conn.arm_stream_idle(self, idle)
        direct = route.route.direct_response
        if direct is not None:
            conn.stats.rq_direct_response += 1
            self._local(direct.status, direct.body.encode(), None, "direct_response")
            return
        assert action is not None and vh is not None
        name, wi = route.pick_cluster(conn.worker.rng)
        cluster = conn.worker.clusters.get(name)
        if cluster is None:
            conn.stats.no_cluster += 1
            info.upstream_cluster = name
            self._local(action.cluster_not_found_response_code, b"", lr.NC, "cluster_not_found")
            return
        if upgrade_value is not None and upgrade_value.lower() not in cfg.upgrades:
            conn.stats.downstream_rq_ws_on_non_ws_route += 1
            self._local(403, b"", None, "upgrade_failed")
            return
        self.cluster = cluster
        self.rq_stats = conn.worker.stats.cluster_http(cluster.config.stat_name)
        info.upstream_cluster = cluster.config.name

        # -- the upstream request head, built once for every attempt -------------------------
        req_ops = route.request_ops
        if wi >= 0:
            req_ops, self.response_ops = route.weighted_ops[wi]
        rewritten = route.rewrite_path(path)
        up_host = action.host_rewrite_literal.encode() if action.host_rewrite_literal else host_b
        # Envoy's order: the client's headers in place (host first), then what the connection
        # manager adds (x-forwarded-proto, a generated x-request-id, the decorator), the HTTP
        # filters' additions, then the router's: expected timeout, attempt count, the route's
        # header operations, x-envoy-original-path; transfer-encoding last (checked on 1.40).
        up: Headers = [(b"host", up_host), *clean]
        if nominated or expect is not None or b"te" in noted:
            up = _clean_rare(up, nominated, expect is not None and cfg.config.proxy_100_continue)
        if b"x-forwarded-proto" not in noted:
            up.append((b"x-forwarded-proto", conn.scheme))
        if new_rid:
            up.append((b"x-request-id", rid))
        if cfg.decorate and route.route.decorator is not None:
            _set(up, noted, b"x-envoy-decorator-operation", route.route.decorator.operation.encode())
        if cfg.lua_request:
            up = apply_ops(up, cfg.lua_request)
        policy = action.retry_policy or vh.vhost.retry_policy
        self.policy = policy
        self.retries_left = policy.num_retries if policy is not None else 0
        expected = action.timeout
        if (
            policy is not None
            and policy.per_try_timeout > 0
            and (expected == 0 or policy.per_try_timeout < expected)
        ):
            expected = policy.per_try_timeout
        if expected > 0:
            up.append((b"x-envoy-expected-rq-timeout-ms", str(int(expected * 1000)).encode()))
        if vh.vhost.include_request_attempt_count:
            _set(up, noted, ATTEMPT_COUNT, b"1")  # a retry rewrites it (upstream_ready)
        if req_ops:
            up = apply_ops(up, req_ops)
        if rewritten is not None:
            _set(up, noted, b"x-envoy-original-path", target)
            target = rewritten.encode("latin-1")
            info.original_path = path
        if upgrade_value is not None:
            up.append((b"connection", b"upgrade"))
            up.append((b"upgrade", upgrade_value))
        if self.chunked_in:
            up.append((b"transfer-encoding", b"chunked"))
        elif cl is None and self.method not in _NO_BODY_METHODS and not self.upgrade:
            # Envoy's HTTP/1 upstream codec says so for a bodiless request of a method that
            # usually has a body (POST, PUT, OPTIONS, ...; checked on 1.40, HTTP/1 and HTTP/2).
            up.append((b"content-length", b"0"))
        self.up_headers = up
        self.up_target = target
        self.start_attempt()

    def decode_body(self, data: bytes) -> None:
        n = len(data)
        self.info.bytes_received += n
        if self.response_done:
            return  # answered already; the rest of the body is read and dropped
        up = self.upstream
        if up is not None and self.started:
            up.writelines([b"%x\r\n" % n, data, CRLF]) if self.chunked_in else up.write(data)
            if self.retain:
                self.body_parts.append(data)
                self.body_bytes += n
                if self.body_bytes > self.conn.buffer_limit:
                    self.retain = False  # too big to replay: no retry for this request
                    self.body_parts = []
            return
        self.body_parts.append(data)
        self.body_bytes += n
        if self.body_bytes > self.conn.buffer_limit and not self.paused_for_body:
            self.retain = False
            self.paused_for_body = True
            self.conn.pause_stream(self)

    def decode_complete(self) -> None:
        self.request_done = True
        if self.has_body:  # Envoy times the upstream from the end of the request
            self.attempt_started = self.conn.loop.time()
        if self.response_done or not self.started:
            if self.response_done:
                self.conn.stream_done(self)
            return
        up = self.upstream
        if up is not None:
            self._request_sent(up)
        self.arm_route_timer()

    def arm_route_timer(self) -> None:
        """The route timeout runs from the end of the request, over every attempt."""
        route = self.route
        if route is None or route.action is None or route.action.timeout <= 0:
            return
        if self.timer is None and not self.tunnel and not self.response_done:
            self.timer = self.conn.loop.call_later(route.action.timeout, self._on_timeout)

    def downstream_reset(self) -> None:
        """The client went away before the stream finished."""
        if self.response_done:
            return
        self.info.response_flags.append(lr.DC)
        self.conn.stats.downstream_rq_rx_reset += 1
        self.drop_upstream()
        self._finish()

    # == attempts ===========================================================================
    def start_attempt(self) -> None:
        self.retry_timer = None
        cluster = self.cluster
        assert cluster is not None and self.rq_stats is not None
        dest = self.conn.destination
        picked = cluster.choose_host(dest)
        policy = self.policy
        if picked is not None and self.attempt and policy is not None and policy.previous_hosts:
            assert self.pool is not None  # the previous attempt's
            tried = self.tried_hosts = (*self.tried_hosts, self.pool.host)
            pick = functools.partial(cluster.choose_host, dest)
            picked = other_host(pick, picked, tried, policy.host_selection_max_attempts, _host_key)
        if picked is None:
            cluster.stats.upstream_cx_none_healthy += 1
            self._local(503, lr.NO_HEALTHY_UPSTREAM_BODY, lr.UH, "no_healthy_upstream")
            return
        host = picked.key
        own = forwarding_loop(host[0], host[1], self.conn.worker.snapshot.own, dest.address)
        if own is not None:
            message = loop_message(cluster.config.name, host[0], host[1], own)
            log.warning("%s", message)
            self._local(LOOP_STATUS, message.encode(), None, LOOP_DETAILS)
            return
        picked.active += 1
        self.lb_host = picked
        self.attempt += 1
        self.info.upstream_host = _fmt(host)
        stats = self.rq_stats
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        self.attempt_open = True
        self.attempt_started = self.conn.loop.time()
        self.pool = pool = self.conn.pools.pool(cluster, stats, host, self.conn.buffer_limit)
        conn = pool.acquire(self)
        if conn is not None:
            self.upstream_ready(conn)

    def upstream_ready(self, up: UpstreamConnection) -> None:
        self.connecting = None
        self.upstream = up
        up.attach(self)
        local = up.local_address
        if local is None and up.transport is not None:
            sock = up.transport.get_extra_info("sockname")  # a syscall: once per connection
            if sock:
                local = up.local_address = _fmt((str(sock[0]), int(sock[1])))
        self.info.upstream_local_address = local
        self.info.upstream_peer_uri_san = up.peer_uri_san
        headers = self.up_headers
        if self.attempt > 1 and self.route is not None and self.route.vhost.vhost.include_request_attempt_count:
            headers = self.up_headers = replace_header(headers, ATTEMPT_COUNT, b"%d" % self.attempt)
        head = encode_request_head(self.method, self.up_target, headers)
        problem = upstream_head_problem(self.method, self.up_target, headers, head)
        if problem is not None:  # never written: it could frame a second request (smuggling)
            self._local(503, b"", None, "invalid_upstream_request{" + problem.replace(" ", "_") + "}")
            return
        parts = [head]
        if self.chunked_in:
            for p in self.body_parts:
                parts += (b"%x\r\n" % len(p), p, CRLF)
        else:
            parts.extend(self.body_parts)
        if not self.retain:
            self.body_parts = []
        up.writelines(parts)
        if self.paused_for_body:
            self.paused_for_body = False
            self.conn.resume_stream(self)
        if self.request_done:
            self._request_sent(up)

    def _request_sent(self, up: UpstreamConnection) -> None:
        if self.chunked_in:
            up.write(CHUNK_END)
        up.request_done = True
        policy = self.policy
        if policy is not None and policy.per_try_timeout > 0:
            self.per_try_timer = self.conn.loop.call_later(
                policy.per_try_timeout, self._on_per_try_timeout
            )

    def upstream_connect_failed(self, reason: str, failure: str | None) -> None:
        self.connecting = None
        self._end_attempt()
        self.info.upstream_transport_failure_reason = failure
        self._reset_before_response(reason, failure)

    def upstream_reset(self, reason: str, failure: str | None) -> None:
        self.upstream = self.connecting = None
        self._end_attempt()
        if self.response_started:
            # Mid-body: nothing more can be said to the client; close it (Envoy's UC).
            self.rq_stats.upstream_rq_rx_reset += 1  # type: ignore[union-attr]
            self.info.response_flags.append(lr.UC)
            self.close_after = True
            self.conn.reset_stream(self)
            self._finish()
            return
        self._reset_before_response(reason, failure)

    def _reset_before_response(self, reason: str, failure: str | None) -> None:
        if self.response_done:
            return
        policy = self.policy
        retriable = policy is not None and retriable_reset(policy, reason)
        if retriable and self._retry():
            return
        flags = self.info.response_flags
        status = 503
        if reason == OVERFLOW:  # a circuit breaker refused it: UO, x-envoy-overloaded
            flags.append(lr.UO)
            self.response_ops = (*self.response_ops, OVERLOADED)
        elif reason == PROTOCOL_ERROR:  # Envoy: 502, UPE
            flags.append(lr.UPE)
            status = 502
        else:
            flags.append(lr.UF if reason in ("connect_failure", "connect_timeout") else lr.UC)
        if retriable and self.retried:
            flags.append(lr.URX)
            self.rq_stats.upstream_rq_retry_limit_exceeded += 1  # type: ignore[union-attr]
        self.info.response_code_details = lr.reset_details(reason, failure)
        if reason != OVERFLOW and self.rq_stats is not None:
            # Envoy's chargeUpstreamAbort: the local reply's code is the upstream's for the
            # cluster's stats (upstream_rq_503 for a refused connect, _502 for a protocol error).
            self.rq_stats.count_code(status)
            _count_class(self.rq_stats, status)
            self.rq_stats.upstream_rq_completed += 1
        self._local(
            status,
            lr.reset_body(reason, self.retried),
            None,
            lr.reset_details(reason, failure),
        )

    def _retry(self) -> bool:
        """Schedule another attempt when the policy, the count and the body allow it."""
        policy = self.policy
        if (
            policy is None
            or self.retries_left <= 0
            or self.timed_out
            or not (self.retain or not self.body_parts)
            or not self.request_done
        ):
            return False
        if not self.retried and not retry_admitted(self):
            return False
        self.retries_left -= 1
        self.retried = True
        self.rq_stats.upstream_rq_retry += 1  # type: ignore[union-attr]
        delay = backoff(self.attempt, policy, self.conn.worker.rng)
        self.retry_timer = self.conn.loop.call_later(delay, self.start_attempt)
        return True

    def _end_attempt(self) -> None:
        if self.per_try_timer is not None:
            self.per_try_timer.cancel()
            self.per_try_timer = None
        # Once per attempt: an upstream that speaks before the pool hands its connection over
        # (an HTTP/2 server's SETTINGS) resets the stream while it is still `connecting`, and
        # the local reply's drop_upstream ended the same attempt again (upstream_rq_active -1).
        if self.rq_stats is not None and self.attempt_open:
            self.rq_stats.upstream_rq_active -= 1
        self.attempt_open = False
        host = self.lb_host
        if host is not None:
            host.active -= 1
            self.lb_host = None

    def drop_upstream(self) -> None:
        for t in (self.timer, self.per_try_timer, self.retry_timer):
            if t is not None:
                t.cancel()
        self.timer = self.per_try_timer = self.retry_timer = None
        up = self.upstream
        self.upstream = None
        if up is not None:
            self._end_attempt()
            up.detach_and_close()
        c = self.connecting
        self.connecting = None
        if c is not None:
            self._end_attempt()
            c.cancel()  # the pool keeps the connection when it completes

    def _on_per_try_timeout(self) -> None:
        self.per_try_timer = None
        self.rq_stats.upstream_rq_per_try_timeout += 1  # type: ignore[union-attr]
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.detach_and_close()
        self._end_attempt()
        if self.response_started:
            self.info.response_flags.append(lr.UT)
            self.conn.reset_stream(self)
            self._finish()
            return
        policy = self.policy
        if policy is not None and retriable_reset(policy, PER_TRY_TIMEOUT) and self._retry():
            return
        self.info.response_flags.append(lr.UT)
        if policy is not None and self.retried:
            self.info.response_flags.append(lr.URX)
        self._local(504, lr.UPSTREAM_TIMEOUT_BODY, None, "response_timeout")

    def stream_idle_timeout(self) -> None:
        """Nothing moved for the stream idle timeout: Envoy's 504 `stream timeout` once the
        request is in (408 while it is still arriving, which also ends the connection), a
        reset once the response started; flag SI."""
        self.info.response_flags.append(lr.SI)
        if self.tunnel:  # an idle tunnel is closed, both ways
            self.drop_upstream()
            self.close_after = True
            self.conn.close_when_flushed()
            self._finish()
            return
        if self.response_started:
            self.drop_upstream()
            self.conn.reset_stream(self)
            self._finish()
            return
        status = 504 if self.request_done else 408
        self._local(status, lr.STREAM_TIMEOUT_BODY, None, "stream_idle_timeout")

    def _on_timeout(self) -> None:
        self.timer = None
        self.timed_out = True
        if self.rq_stats is not None:
            self.rq_stats.upstream_rq_timeout += 1
        self.drop_upstream()
        self.info.response_flags.append(lr.UT)
        if self.response_started:
            self.conn.reset_stream(self)
            self._finish()
            return
        self._local(504, lr.UPSTREAM_TIMEOUT_BODY, None, "response_timeout")

    # == upstream response ===================================================================
    def upstream_headers(self, status: int, headers: Headers) -> None:
        stats = self.rq_stats
        assert stats is not None
        stats.count_code(status)
        _count_class(stats, status)
        if self.per_try_timer is not None:
            self.per_try_timer.cancel()
            self.per_try_timer = None
        policy = self.policy
        if policy is not None and status != 101 and retriable_status(policy, status):
            up = self.upstream
            if self._retry():
                self.upstream = None
                self._end_attempt()
                if up is not None:
                    up.detach_and_close()
                return
            if self.retried:
                self.info.response_flags.append(lr.URX)
        if self.retried and status < 500:
            stats.upstream_rq_retry_success += 1
        conn = self.conn
        cfg = conn.cfg
        info = self.info
        self.response_started = True
        info.response_code = status
        info.response_code_details = "via_upstream"
        elapsed = int((conn.loop.time() - self.attempt_started) * 1000)
        info.upstream_service_time_ms = elapsed
        # One pass strips the upstream's hop-by-hop headers, puts our server in its place and
        # notes content-length and date; operations that touch those names re-check them.
        out, seen = scan_response(headers, cfg.server_header)
        if status != 101:  # Envoy 1.40 sends no service time on a 101
            out.append((b"x-envoy-upstream-service-time", b"%d" % elapsed))
        if cfg.decorate_response:
            decorator = self.route.route.decorator if self.route is not None else None
            if decorator is not None:
                out.append((b"x-envoy-decorator-operation", decorator.operation.encode()))
        ops = self.response_ops
        if ops or cfg.lua_response:
            if ops:
                out = apply_ops(out, ops)
            if cfg.lua_response:
                out = apply_ops(out, cfg.lua_response)
            if touches(ops, RESPONSE_NOTED) or cfg.lua_touches_noted:
                seen = (HAS_LENGTH if get(out, b"content-length") is not None else 0) | (
                    HAS_DATE if get(out, b"date") is not None else 0
                )
                out = replace_header(out, b"server", cfg.server)
                seen |= HAS_SERVER
        if status == 101:
            out.append((b"connection", b"upgrade"))
            up_value = get(headers, b"upgrade")
            if up_value is not None:
                out.append((b"upgrade", up_value))
            self.tunnel = True
        if not seen & HAS_DATE:
            out.append((b"date", http_date()))
        if not seen & HAS_SERVER:
            out.append(cfg.server_header)
        # The codec frames it (HTTP/1: connection, chunking, the head held for the body).
        conn.encode_headers(self, status, out, seen & HAS_LENGTH != 0)
        if self.tunnel:
            conn.start_tunnel(self)

    def flush_head(self) -> None:
        """Write a response head the codec still holds (HTTP/1: see encode_headers)."""
        self.conn.encode_flush(self)

    def upstream_body(self, data: bytes) -> None:
        self.info.bytes_sent += len(data)
        self.conn.encode_data(self, data)

    def upstream_complete(self) -> None:
        self.upstream = None
        self._end_attempt()
        if self.rq_stats is not None:
            self.rq_stats.upstream_rq_completed += 1
            self.rq_stats.upstream_rq_time.record(
                (self.conn.loop.time() - self.attempt_started) * 1000
            )
        if self.response_done:
            return
        self.conn.encode_end(self)
        self._finish()

    def upstream_continue(self) -> None:
        """The upstream's `100 Continue`: the client's, under proxy_100_continue."""
        if self.conn.cfg.config.proxy_100_continue and not self.response_started:
            self.conn.encode_continue(self)

    def upstream_pause_writing(self) -> None:
        self.conn.pause_stream(self)

    def upstream_resume_writing(self) -> None:
        self.conn.resume_stream(self)

    # -- websocket and other upgrades: a byte tunnel after 101 ---------------------------------
    def upstream_tunnel_data(self, data: bytes) -> None:
        self.info.bytes_sent += len(data)
        self.conn.write(data)

    def upstream_tunnel_closed(self) -> None:
        self.upstream = None
        self._end_attempt()
        self.close_after = True
        self.conn.close_when_flushed()
        self._finish()

    def downstream_tunnel_data(self, data: bytes) -> None:
        self.info.bytes_received += len(data)
        up = self.upstream
        if up is not None:
            up.write(data)

    # == endings ============================================================================
    def _local(self, status: int, body: bytes, flag: str | None, details: str) -> None:
        """Answer the request ourselves (Envoy's sendLocalReply) and finish the stream."""
        conn = self.conn
        info = self.info
        self.drop_upstream()
        if flag is not None:
            info.response_flags.append(flag)
        info.response_code = status
        info.response_code_details = details
        info.bytes_sent += 0 if self.head_request else len(body)
        conn.encode_local_reply(self, status, body)
        self.response_started = True
        self._finish()

    def _finish(self) -> None:
        if self.response_done:
            return
        self.response_done = True
        if self.retried:
            self.cluster.breaker.retries -= 1  # type: ignore[union-attr]
        for t in (self.timer, self.per_try_timer, self.retry_timer):
            if t is not None:
                t.cancel()
        self.timer = self.per_try_timer = self.retry_timer = None
        if self.paused_for_body:
            self.paused_for_body = False
            self.conn.resume_stream(self)
        self.conn.stream_done(self)


ATTEMPT_COUNT = b"x-envoy-attempt-count"
# HeaderUtility::requestShouldHaveNoBody: no `content-length: 0` is added for these.
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"TRACE", b"CONNECT"})
# Connection tokens that are about the connection itself, not names of headers to drop.
_CONNECTION_OWN = frozenset({b"close", b"keep-alive", b"upgrade"})


def _set(up: Headers, noted: dict[bytes, bytes], name: bytes, value: bytes) -> None:
    """Envoy's inline header set: the client's copy (kept by the scan) is overwritten in its
    place, else the header goes at the end."""
    if name in noted:
        up[:] = replace_header(up, name, value)
    else:
        up.append((name, value))


def _clean_rare(up: Headers, nominated: set[bytes], keep_expect: bool) -> Headers:
    """The hop-by-hop cases Envoy handles header by header (rare: a list rebuilt): `te` goes
    on only as `te: trailers`, headers the Connection header nominates are dropped, `expect`
    goes upstream only under proxy_100_continue."""
    drop = set(nominated)
    if not keep_expect:
        drop.add(b"expect")
    out: Headers = []
    for n, v in up:
        if n == b"te":
            if b"trailers" in tokens(v):
                out.append((n, b"trailers"))
        elif n not in drop:
            out.append((n, v))
    return out


def _count_class(stats: ClusterHttpStats, status: int) -> None:
    cls = status // 100
    if cls == 2:
        stats.upstream_rq_2xx += 1
    elif cls == 5:
        stats.upstream_rq_5xx += 1
    elif cls == 4:
        stats.upstream_rq_4xx += 1
    elif cls == 3:
        stats.upstream_rq_3xx += 1
    else:
        stats.upstream_rq_1xx += 1


def _as_dict(headers: Headers) -> dict[str, str]:
    """Header matchers see one value per name; repeated headers join with ',' as in Envoy."""
    out: dict[str, str] = {}
    for n, v in headers:
        name = n.decode("latin-1")
        value = v.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out
