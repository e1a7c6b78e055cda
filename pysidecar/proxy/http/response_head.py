"""What the connection manager does to an upstream's response head before its codec frames it,
in Envoy 1.40's order (checked against it).

Promises: `upstream_response_head(stream, status, headers, service_time_ms)` returns (headers,
whether they carry content-length): the upstream's hop-by-hop and Envoy-owned headers stripped
and its `server` replaced by ours in place (one pass, `headers.scan_response`), then
x-envoy-upstream-service-time (not on a 101), the decorator operation (inbound listeners with
tracing), the route's response headers, the encoder filters' additions (operations that touch
content-length / date / server re-check them), `connection: upgrade` + `upgrade` on a 101,
`date` and `server` when still missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.proxy.http.headers import (
    HAS_DATE,
    HAS_LENGTH,
    HAS_SERVER,
    RESPONSE_NOTED,
    Headers,
    apply_ops,
    get,
    http_date,
    replace_header,
    scan_response,
    touches,
)

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream


def upstream_response_head(
    stream: ActiveStream, status: int, headers: Headers, service_time_ms: int
) -> tuple[Headers, bool]:
    cfg = stream.conn.cfg
    out, seen = scan_response(headers, cfg.server_header)
    if status != 101:  # Envoy 1.40 sends no service time on a 101
        out.append((b"x-envoy-upstream-service-time", b"%d" % service_time_ms))
    if cfg.decorate_response:
        decorator = stream.route.route.decorator if stream.route is not None else None
        if decorator is not None:
            out.append((b"x-envoy-decorator-operation", decorator.operation.encode()))
    ops = stream.response_ops
    encoders = cfg.encoders
    if ops or encoders:
        if ops:
            out = apply_ops(out, ops)
        for f in encoders:
            out = f.encode_headers(stream, out)
        if touches(ops, RESPONSE_NOTED) or cfg.encoders_touch_noted:
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
    if not seen & HAS_DATE:
        out.append((b"date", http_date()))
    if not seen & HAS_SERVER:
        out.append(cfg.server_header)
    return out, seen & HAS_LENGTH != 0
