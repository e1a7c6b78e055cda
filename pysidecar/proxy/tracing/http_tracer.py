"""The connection manager's tracing, as Envoy's HCM does it: decide, start a span, inject B3,
finish and report. The glue between an ActiveStream and the pure pieces beside this file.

Promises:
- `trace_request(stream, tracing, up, egress)` runs when the request's route is known and the
  upstream headers are being built: the trace decision goes into x-request-id (downstream and
  upstream alike, so the next hop agrees); with a zipkin provider a span starts (egress:
  CLIENT, ingress: SERVER; a child of an incoming B3 context) named after the route's
  decorator operation, else the incoming x-envoy-decorator-operation (ingress; the header is
  then not passed on), else the request's host. Returns the upstream headers.
- `inject_trace(stream, up)` is the router's last step on the upstream head, where Envoy's
  upstream request injects the span's context: B3 headers in place of any the client sent.
- `finish_request(stream)` tags the span with Envoy's finalizeDownstreamSpan tags
  (guid:x-request-id, http.url, http.method, downstream_cluster, user_agent, http.protocol,
  peer.address, request_size, response_size, component, upstream_cluster,
  upstream_cluster.name, http.status_code, response_flags, error, node_id, custom literal
  tags) and hands it to the worker's reporter when sampled. Never raises into the data path.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from pysidecar.model.http import Tracing
from pysidecar.proxy.http.headers import Headers, get
from pysidecar.proxy.tracing.decision import decide
from pysidecar.proxy.tracing.zipkin import extract, inject, start_span, to_json

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream

log = logging.getLogger(__name__)

_B3 = frozenset((b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags", b"b3"))
_DECORATOR = b"x-envoy-decorator-operation"
_rng = random.SystemRandom()


def _rand64() -> int:
    return _rng.getrandbits(64) or 1


def _set_rid(headers: Headers, rid: bytes) -> None:
    for i, (name, _) in enumerate(headers):
        if name == b"x-request-id":
            headers[i] = (name, rid)


def trace_request(stream: ActiveStream, tracing: Tracing, up: Headers, egress: bool) -> Headers:
    rid = (stream.info.request_id or "").encode("latin-1")
    client = get(stream.headers, b"x-client-trace-id") is not None
    force = get(stream.headers, b"x-envoy-force-trace") is not None
    marked, traced = decide(rid, tracing, client, force, lambda: _rng.randrange(10000))
    if marked != rid:
        _set_rid(stream.headers, marked)
        _set_rid(up, marked)
        stream.info.request_id = marked.decode("latin-1")
    z = tracing.provider
    if z is None:
        return up
    route = stream.route
    decorator = route.route.decorator if route is not None else None
    name = decorator.operation if decorator is not None else stream.host
    if not egress and decorator is None:
        incoming = get(stream.headers, _DECORATOR)
        if incoming:
            name = incoming.decode("latin-1")
            up = [h for h in up if h[0] != _DECORATOR]
    span = start_span(
        name, egress, extract(stream.headers), traced, int(stream.info.start_time * 1_000_000),
        z.trace_id_128bit, z.shared_span_context, _rand64,
    )  # fmt: skip
    stream.span = span
    return up


def inject_trace(stream: ActiveStream, up: Headers) -> Headers:
    """The router's last headers, as Envoy's upstream request injects the span's context: any
    B3 headers the client sent are replaced."""
    span = stream.span
    if span is None:
        return up
    return [h for h in up if h[0] not in _B3] + inject(span)


def finish_request(stream: ActiveStream) -> None:
    span = stream.span
    if span is None:
        return
    stream.span = None
    tracing = stream.conn.cfg.config.tracing
    if not span.sampled or tracing is None or tracing.provider is None:
        return
    try:
        info = stream.info
        headers = stream.headers
        span.duration_us = max(0, int((time.time() - info.start_time) * 1_000_000))
        proto = get(headers, b"x-forwarded-proto")
        scheme = proto.decode("latin-1") if proto else stream.conn.scheme.decode("latin-1")
        path = info.original_path or info.path or ""
        url = f"{scheme}://{stream.host}{path}"[: tracing.max_path_tag_length]
        downstream_cluster = get(headers, b"x-envoy-downstream-service-cluster")
        tags = span.tags
        if info.request_id:
            tags["guid:x-request-id"] = info.request_id
        tags["http.url"] = url
        tags["http.method"] = info.method or ""
        tags["downstream_cluster"] = downstream_cluster.decode("latin-1") if downstream_cluster else "-"
        tags["user_agent"] = info.user_agent or "-"
        tags["http.protocol"] = info.protocol or "-"
        tags["peer.address"] = stream.conn.peer_ip
        if (ctid := get(headers, b"x-client-trace-id")) is not None:
            tags["guid:x-client-trace-id"] = ctid.decode("latin-1")
        for key, value in tracing.custom_tags:
            tags[key] = value
        tags["request_size"] = str(info.bytes_received)
        tags["response_size"] = str(info.bytes_sent)
        tags["component"] = "proxy"
        if info.upstream_cluster:
            tags["upstream_cluster"] = info.upstream_cluster
            tags["upstream_cluster.name"] = info.upstream_cluster
        tags["http.status_code"] = str(info.response_code)
        tags["response_flags"] = info.response_flags_text
        if info.response_code >= 500 or info.response_code == 0:
            tags["error"] = "true"
        worker = stream.conn.worker
        tags["node_id"] = worker.node_id
        worker.zipkin(tracing.provider).report(to_json(span, worker.service_cluster, worker.local_ip))
    except Exception:  # tracing never breaks a stream
        log.exception("zipkin: finishing a span failed")
