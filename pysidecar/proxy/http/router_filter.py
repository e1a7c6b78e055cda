"""envoy.filters.http.router: route → cluster → attempts, with retries and timeouts (Envoy's
Router::Filter). Always the last HTTP filter.

Promises:
- `RouterFilter.decode_headers` answers what the router answers itself, in Envoy's order:
  require_tls (301), no route (404 NR), a redirect route, a direct_response, an unknown
  cluster (NC), an upgrade the connection manager does not allow (403); otherwise it
  completes the upstream request's headers once for every attempt (expected timeout, attempt
  count, the route's header operations, rewrites, x-envoy-original-path, upgrade and body
  framing) and hands the request to a `Router`.
- `Router` runs the attempts, each an `UpstreamRequest` on a host the cluster's load
  balancer picks (previous_hosts honoured on retries): the route timeout (from the end of the
  request) covers every attempt → 504 UT; a per-try timeout ends one attempt; retries follow
  retry_on (`retry.py`) with jittered backoff, under the cluster's max_retries circuit
  breaker (UO, upstream_rq_retry_overflow); an attempt that fails before a response and is
  not retried gets `local_reply.reset_reply` (503 UF / UC / UO, URX).
- A response that started cannot be replaced: a failure then resets the stream (UC / UT).
- An attempt to a host that is one of our own listeners is answered 508 (a forwarding loop,
  `loop_detect`) instead of connected.
- Timers are loop handles, never tasks; every attempt's accounting (upstream_rq_active, the
  host's active count) is undone exactly once.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from pysidecar.observe.stats import ClusterHttpStats
from pysidecar.proxy.http import grpc
from pysidecar.proxy.http import local_reply as lr
from pysidecar.proxy.http.filters.base import PassThroughFilter
from pysidecar.proxy.http.headers import APPEND, apply_ops, get, replace_header, set_in_place
from pysidecar.proxy.http.retry import (
    OVERFLOW,
    PER_TRY_TIMEOUT,
    backoff,
    other_host,
    retriable_reset,
    retriable_status,
)
from pysidecar.proxy.http.route_table import HTTPS_REDIRECT, redirect_location
from pysidecar.proxy.http.stream_state import REQUEST_DONE, RESPONSE_DONE, RESPONSE_STARTED
from pysidecar.proxy.http.upstream_request import UpstreamRequest
from pysidecar.proxy.loop_detect import LOOP_DETAILS, LOOP_STATUS, forwarding_loop, loop_message
from pysidecar.proxy.tracing.http_tracer import inject_trace

if TYPE_CHECKING:
    import asyncio

    from pysidecar.model.http import RetryPolicy
    from pysidecar.proxy.cluster_manager import ClusterRuntime
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.codec import UpstreamCodec
    from pysidecar.proxy.http.headers import Headers
    from pysidecar.proxy.http.route_table import CompiledRoute
    from pysidecar.proxy.lb import Host

log = logging.getLogger(__name__)

ATTEMPT_COUNT = b"x-envoy-attempt-count"
# Envoy's header on a circuit breaker's 503 (after the route's response headers).
OVERLOADED = (APPEND, b"x-envoy-overloaded", b"true")
# HeaderUtility::requestShouldHaveNoBody: no `content-length: 0` is added for these.
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"TRACE", b"CONNECT"})


def _host_key(h: Host) -> tuple[str, int]:
    return h.key


class RouterFilter(PassThroughFilter):
    """The chain's last filter: what the router decides before any attempt."""

    __slots__ = ()

    def decode_headers(self, stream: ActiveStream) -> bool:
        conn = stream.conn
        cfg = conn.cfg
        info = stream.info
        host, path = stream.host, stream.path
        if stream.tls_redirect:  # Envoy answers require_tls before any route is looked at
            location = redirect_location(HTTPS_REDIRECT, host, path)
            stream.response_ops = ((APPEND, b"location", location.encode("latin-1")),)
            stream.send_local_reply(lr.TLS_REDIRECT)
            return False
        route = stream.route
        if route is None:
            conn.stats.no_route += 1
            stream.send_local_reply(lr.NO_ROUTE)
            return False
        redirect = route.route.redirect
        if redirect is not None:
            conn.stats.rq_direct_response += 1
            proto = get(stream.headers, b"x-forwarded-proto")
            scheme = (proto if proto is not None else conn.scheme).decode("latin-1").lower()
            location = redirect_location(redirect, host, path, scheme, route.rewrite_path(path))
            stream.response_ops = (
                *stream.response_ops,
                (APPEND, b"location", location.encode("latin-1")),
            )
            stream.send_local_reply(lr.redirect(redirect.response_code))
            return False
        action = route.action
        idle = action.idle_timeout if action is not None else None
        if idle is not None and idle != stream.idle_timeout:
            conn.arm_stream_idle(stream, idle)
        direct = route.route.direct_response
        if direct is not None:
            conn.stats.rq_direct_response += 1
            stream.send_local_reply(lr.direct_response(direct.status, direct.body.encode()))
            return False
        assert action is not None
        worker = conn.worker
        name, wi = route.pick_cluster(worker.rng)
        cluster = worker.clusters.get(name)
        if cluster is None:
            conn.stats.no_cluster += 1
            info.upstream_cluster = name
            stream.send_local_reply(lr.cluster_not_found(action.cluster_not_found_response_code))
            return False
        upgrade_value = stream.upgrade_value
        if upgrade_value is not None and upgrade_value.lower() not in cfg.upgrades:
            conn.stats.downstream_rq_ws_on_non_ws_route += 1
            stream.send_local_reply(lr.UPGRADE_FAILED)
            return False
        info.upstream_cluster = cluster.config.name

        # -- the router's part of the upstream request head, built once for every attempt -----
        req_ops = route.request_ops
        if wi >= 0:
            req_ops, stream.response_ops = route.weighted_ops[wi]
        vh = route.vhost.vhost
        noted = stream.noted
        up = stream.up_headers
        if action.host_rewrite_literal and up and up[0][0] == b"host":
            up[0] = (b"host", action.host_rewrite_literal.encode())
        policy = action.retry_policy or vh.retry_policy
        expected = action.timeout
        if (
            policy is not None
            and policy.per_try_timeout > 0
            and (expected == 0 or policy.per_try_timeout < expected)
        ):
            expected = policy.per_try_timeout
        if expected > 0:
            up.append((b"x-envoy-expected-rq-timeout-ms", str(int(expected * 1000)).encode()))
        if vh.include_request_attempt_count:
            set_in_place(up, noted, ATTEMPT_COUNT, b"1")  # a retry rewrites it (upstream_ready)
        if req_ops:
            up = apply_ops(up, req_ops)
        target = stream.target
        rewritten = route.rewrite_path(path)
        if rewritten is not None:
            set_in_place(up, noted, b"x-envoy-original-path", target)
            target = rewritten.encode("latin-1")
            info.original_path = path
        if upgrade_value is not None:
            up.append((b"connection", b"upgrade"))
            up.append((b"upgrade", upgrade_value))
        if stream.chunked_in:
            up.append((b"transfer-encoding", b"chunked"))
        elif (
            stream.content_length is None
            and stream.method not in _NO_BODY_METHODS
            and not stream.upgrade
        ):
            # Envoy's HTTP/1 upstream codec says so for a bodiless request of a method that
            # usually has a body (POST, PUT, OPTIONS, ...; checked on 1.40, HTTP/1 and HTTP/2).
            up.append((b"content-length", b"0"))
        if stream.span is not None:
            up = inject_trace(stream, up)
        stream.up_headers = up
        router = stream.router = Router(stream, route, cluster, policy, target)
        router.start_attempt()
        if stream.state & REQUEST_DONE:
            router.arm_route_timer()
        return False


class Router:
    """One request's attempts (Envoy's Router::Filter state for a stream)."""

    __slots__ = (
        "attempt",
        "cluster",
        "duration_timer",
        "policy",
        "request",
        "retried",
        "retries_left",
        "retry_timer",
        "route",
        "rq_stats",
        "stream",
        "target",
        "timed_out",
        "timer",
        "tried_hosts",
    )

    def __init__(
        self,
        stream: ActiveStream,
        route: CompiledRoute,
        cluster: ClusterRuntime,
        policy: RetryPolicy | None,
        target: bytes,
    ) -> None:
        self.stream = stream
        self.route = route
        self.cluster = cluster
        self.rq_stats: ClusterHttpStats = cluster.http_stats(stream.conn.worker.stats)
        self.policy = policy
        self.retries_left = policy.num_retries if policy is not None else 0
        self.target = target
        self.attempt = 0
        self.retried = False
        self.timed_out = False
        self.request: UpstreamRequest | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.retry_timer: asyncio.TimerHandle | None = None
        self.tried_hosts: tuple[tuple[str, int], ...] = ()  # grown on retries only
        self.duration_timer: asyncio.TimerHandle | None = None
        action = route.action
        if action is not None and (action.max_stream_duration or action.grpc_timeout_header_max is not None):
            header = get(stream.headers, b"grpc-timeout") if stream.info.grpc else None
            limit = grpc.stream_duration(action.max_stream_duration, action.grpc_timeout_header_max, header)
            if limit > 0:
                self.duration_timer = stream.conn.loop.call_later(limit, self._on_max_duration)

    # == attempts ================================================================================
    def start_attempt(self) -> None:
        self.retry_timer = None
        stream = self.stream
        conn = stream.conn
        cluster = self.cluster
        dest = conn.destination
        picked = cluster.choose_host(dest)
        policy = self.policy
        prev = self.request
        if picked is not None and prev is not None and policy is not None and policy.previous_hosts:
            tried = self.tried_hosts = (*self.tried_hosts, prev.pool.host)
            pick = functools.partial(cluster.choose_host, dest)
            picked = other_host(pick, picked, tried, policy.host_selection_max_attempts, _host_key)
        if picked is None:
            cluster.stats.upstream_cx_none_healthy += 1
            stream.send_local_reply(lr.NO_HEALTHY_UPSTREAM)
            return
        host = picked.key
        own = forwarding_loop(host[0], host[1], conn.worker.snapshot.own, dest.address)
        if own is not None:  # an upstream that is one of our own listeners: 508, not a storm
            message = loop_message(cluster.config.name, host[0], host[1], own)
            log.warning("%s", message)
            stream.local_reply(LOOP_STATUS, message.encode(), (), LOOP_DETAILS)
            return
        self.attempt += 1
        pool = conn.pools.pool(
            cluster, self.rq_stats, host, conn.buffer_limit, self.stream.info.protocol == "HTTP/2"
        )
        self.request = req = UpstreamRequest(self, pool, picked)
        req.start()

    def upstream(self) -> UpstreamCodec | None:
        req = self.request
        return req.upstream if req is not None else None

    def encode_request(self, req: UpstreamRequest, up: UpstreamCodec) -> None:
        """An attempt got its connection: the head with what is buffered of the body."""
        stream = self.stream
        headers = stream.up_headers
        if self.attempt > 1 and self.route.vhost.vhost.include_request_attempt_count:
            headers = stream.up_headers = replace_header(
                headers, ATTEMPT_COUNT, b"%d" % self.attempt
            )
        problem = up.encode_headers(stream.method, self.target, headers, stream.body_parts, stream.chunked_in)
        if problem is not None:  # never written: it could frame a second request (smuggling)
            stream.send_local_reply(lr.invalid_upstream_request(problem))
            return
        stream.body_taken()
        if stream.state & REQUEST_DONE:
            req.request_sent()

    def encode_upstream_data(self, data: bytes) -> bool:
        """Request body bytes: to the attempt's connection when it has one (True)."""
        req = self.request
        up = req.upstream if req is not None else None
        if up is None:
            return False
        up.encode_data(data)
        return True

    def decode_complete(self, has_body: bool) -> None:
        """The client's request is complete."""
        if self.stream.state & RESPONSE_DONE:
            return
        req = self.request
        if req is not None:
            if has_body:  # Envoy times the upstream from the end of the request
                req.attempt_started = self.stream.conn.loop.time()
            if req.upstream is not None:
                req.request_sent()
        self.arm_route_timer()

    # == timers =================================================================================
    def arm_route_timer(self) -> None:
        """The route timeout runs from the end of the request, over every attempt."""
        action = self.route.action
        if action is None or action.timeout <= 0:
            return
        stream = self.stream
        if self.timer is None and not stream.tunnel and not stream.state & RESPONSE_DONE:
            self.timer = stream.conn.loop.call_later(action.timeout, self._on_timeout)

    def cancel_route_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timeout(self) -> None:
        self.timer = None
        self.timed_out = True
        self.rq_stats.upstream_rq_timeout += 1
        stream = self.stream
        stream.drop_upstream()
        stream.info.response_flags.append(lr.UT)
        if stream.state & RESPONSE_STARTED:
            stream.reset()
            return
        stream.send_local_reply(lr.ROUTE_TIMEOUT)

    def _on_max_duration(self) -> None:
        self.duration_timer = None
        stream = self.stream
        stream.drop_upstream()
        if stream.state & RESPONSE_STARTED:
            stream.reset("DT")
            return
        stream.send_local_reply(lr.DURATION_TIMEOUT)

    def on_per_try_timeout(self, req: UpstreamRequest) -> None:
        self.rq_stats.upstream_rq_per_try_timeout += 1
        req.abandon()
        stream = self.stream
        if stream.state & RESPONSE_STARTED:
            stream.reset(lr.UT)
            return
        policy = self.policy
        if policy is not None and retriable_reset(policy, PER_TRY_TIMEOUT) and self._retry():
            return
        flags = (lr.UT, lr.URX) if policy is not None and self.retried else (lr.UT,)
        stream.local_reply(504, lr.UPSTREAM_TIMEOUT_BODY, flags, "response_timeout")

    # == an attempt's outcome ===================================================================
    def on_reset(self, req: UpstreamRequest, reason: str, failure: str | None) -> None:
        """The attempt failed: a connect failure, a refusal or a reset by the upstream."""
        stream = self.stream
        if stream.state & RESPONSE_STARTED:
            # Mid-body: nothing more can be said to the client; close it (Envoy's UC, UR for
            # an HTTP/2 stream the upstream reset).
            self.rq_stats.upstream_rq_rx_reset += 1
            stream.close_after = True
            stream.info.response_code_details = lr.after_start_details(reason)
            stream.reset(lr.reset_flag(reason))
            return
        if stream.state & RESPONSE_DONE:
            return
        policy = self.policy
        retriable = policy is not None and retriable_reset(policy, reason)
        if retriable and self._retry():
            return
        if reason == OVERFLOW:  # a circuit breaker refused it: UO, x-envoy-overloaded
            stream.response_ops = (*stream.response_ops, OVERLOADED)
        stats = self.rq_stats
        if retriable and self.retried:
            stats.upstream_rq_retry_limit_exceeded += 1
        reply = lr.reset_reply(reason, failure, retriable, self.retried)
        if reason != OVERFLOW:
            # Envoy's chargeUpstreamAbort: the local reply's code is the upstream's for the
            # cluster's stats (upstream_rq_503 for a refused connect, _502 for a protocol error).
            stats.count_code(reply.status)
            _count_class(stats, reply.status)
            stats.upstream_rq_completed += 1
        stream.send_local_reply(reply)

    def on_headers(self, req: UpstreamRequest, status: int, headers: Headers) -> None:
        stats = self.rq_stats
        req.cancel_per_try_timer()
        policy = self.policy
        stream = self.stream
        if (
            policy is not None
            and status != 101
            and (retriable_status(policy, status) or grpc.retriable_grpc(policy.retry_on, headers))
        ):
            if self._retry():
                # Envoy charges a retried response to retry.upstream_rq_<code>, not to the
                # cluster's upstream_rq_<code> (checked on 1.40 with a gRPC retry).
                req.abandon()
                return
            if self.retried:
                stream.info.response_flags.append(lr.URX)
        stats.count_code(status)
        _count_class(stats, status)
        if self.retried and status < 500:
            stats.upstream_rq_retry_success += 1
        elapsed = int((stream.conn.loop.time() - req.attempt_started) * 1000)
        stream.encode_headers(status, headers, elapsed)

    def on_complete(self, req: UpstreamRequest) -> None:
        stats = self.rq_stats
        stats.upstream_rq_completed += 1
        stats.upstream_rq_time.record((self.stream.conn.loop.time() - req.attempt_started) * 1000)
        if req.trailers is not None:
            self.stream.encode_trailers(req.trailers)
        else:
            self.stream.encode_end()

    def _retry(self) -> bool:
        """Schedule another attempt when the policy, the count and the body allow it."""
        policy = self.policy
        stream = self.stream
        if (
            policy is None
            or self.retries_left <= 0
            or self.timed_out
            or not (stream.retain or not stream.body_parts)
            or not stream.state & REQUEST_DONE
        ):
            return False
        if not self.retried and not self._retry_admitted():
            return False
        self.retries_left -= 1
        self.retried = True
        self.rq_stats.upstream_rq_retry += 1
        delay = backoff(self.attempt, policy, stream.conn.worker.rng)
        self.retry_timer = stream.conn.loop.call_later(delay, self.start_attempt)
        return True

    def _retry_admitted(self) -> bool:
        """One of the cluster's max_retries slots, held for the rest of the request (released
        in `release`), or a refusal: upstream_rq_retry_overflow and UO (RetryStatus::NoOverflow)."""
        breaker = self.cluster.breaker
        if not breaker.can_retry():
            self.rq_stats.upstream_rq_retry_overflow += 1
            self.stream.info.response_flags.append(lr.UO)
            return False
        breaker.retries += 1
        return True

    # == endings ================================================================================
    def drop_upstream(self) -> None:
        """Stop everything in flight: timers, the attempt (its connection closed, or given back
        to the pool if still connecting)."""
        self._stop_timers()
        req = self.request
        if req is not None:
            req.drop()

    def release(self) -> None:
        """The stream is over: the retry slot goes back, the timers stop, and the references
        that make stream → router → attempt → router → stream cycles are dropped (Envoy's
        onDestroy), so reference counting frees a finished request at once: left as cycles,
        every request was garbage for the collector, a gen0 pass every ~50 requests."""
        if self.retried:
            self.cluster.breaker.retries -= 1
        self._stop_timers()
        req = self.request
        if req is not None:
            req.cancel_per_try_timer()
        # An upstream still calling back reaches the stream through req.router.stream.
        self.request = None
        self.stream.router = None

    def _stop_timers(self) -> None:
        for t in (self.timer, self.retry_timer, self.duration_timer):
            if t is not None:
                t.cancel()
        self.timer = self.retry_timer = self.duration_timer = None


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
