"""A cluster's upstream HTTP options in Envoy v3 YAML: which HTTP it speaks and its limits.

Promises:
- `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`:
  `explicit_http_config` with exactly one of `http_protocol_options` (HTTP/1.1) or
  `http2_protocol_options` (HTTP/2, h2c with prior knowledge on plaintext), or
  `use_downstream_protocol_config` (`http_protocol_options` and/or `http2_protocol_options`:
  the downstream's HTTP), and `common_http_protocol_options` (idle_timeout,
  max_requests_per_connection, max_connection_duration). No upstream_protocol_options at all
  is Envoy's default, HTTP/1.1.
- The older cluster-level `http2_protocol_options` means explicit HTTP/2, as in Envoy; given
  together with the typed options it is refused, as Envoy refuses it.
- `http2_options(node)` reads the subset of `config.core.v3.Http2ProtocolOptions` pysidecar
  acts on (max_concurrent_streams, initial_stream_window_size, initial_connection_window_size,
  within Envoy's bounds), for clusters and the HTTP connection manager alike. Any other field
  (http3, auto_config, connection_keepalive, hpack_table_size, ...) is refused with its path.
- Pure: reads nodes, returns frozen data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pysidecar.common.envoy_json import HTTP_PROTOCOL_OPTIONS
from pysidecar.config.node import Node
from pysidecar.model import DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT, UpstreamHttpProtocol
from pysidecar.model.http import Http2Options

# Envoy's bounds (config.core.v3.Http2ProtocolOptions): streams 1..2^31-1, windows 65535..2^31-1.
_MAX_STREAMS = 2**31 - 1
_MIN_WINDOW = 65535


@dataclass(frozen=True, slots=True)
class UpstreamHttpOptions:
    """The Cluster fields these options set (names as in pysidecar.model.Cluster)."""

    http_idle_timeout: float = DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT
    max_requests_per_connection: int = 0
    max_connection_duration: float = 0.0
    upstream_http_protocol: UpstreamHttpProtocol = UpstreamHttpProtocol.HTTP1
    http2_options: Http2Options = field(default_factory=Http2Options)


def http2_options(node: Node) -> Http2Options:
    f = node.fields(
        "max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"
    )
    return Http2Options(
        max_concurrent_streams=f.opt(
            "max_concurrent_streams", lambda n: n.integer(1, _MAX_STREAMS), None
        ),
        initial_stream_window_size=f.opt(
            "initial_stream_window_size", lambda n: n.integer(_MIN_WINDOW, _MAX_STREAMS), None
        ),
        initial_connection_window_size=f.opt(
            "initial_connection_window_size", lambda n: n.integer(_MIN_WINDOW, _MAX_STREAMS), None
        ),
    )


def _http1_options(node: Node) -> None:
    """Http1ProtocolOptions: pysidecar's upstream HTTP/1.1 has no knobs; any field is refused."""
    node.fields()


def cluster_http_options(typed: Node | None, legacy_http2: Node | None) -> UpstreamHttpOptions:
    """The cluster's `typed_extension_protocol_options` and `http2_protocol_options` nodes."""
    if legacy_http2 is not None:
        if typed is not None:
            legacy_http2.fail(
                "http2_protocol_options cannot be combined with typed_extension_protocol_options"
                f" {HTTP_PROTOCOL_OPTIONS} (Envoy refuses both); put it under explicit_http_config"
            )
        return UpstreamHttpOptions(
            upstream_http_protocol=UpstreamHttpProtocol.HTTP2,
            http2_options=http2_options(legacy_http2),
        )
    if typed is None:
        return UpstreamHttpOptions()
    opts = typed.fields(HTTP_PROTOCOL_OPTIONS).require(HTTP_PROTOCOL_OPTIONS)
    f = opts.fields(
        "@type",
        "common_http_protocol_options",
        "explicit_http_config",
        "use_downstream_protocol_config",
    )
    if "@type" in f and opts.type_url() != HTTP_PROTOCOL_OPTIONS:
        f.require("@type").fail(f"expected type {HTTP_PROTOCOL_OPTIONS}")
    explicit, downstream = f.get("explicit_http_config"), f.get("use_downstream_protocol_config")
    protocol, h2 = UpstreamHttpProtocol.HTTP1, Http2Options()
    if explicit is not None and downstream is not None:
        downstream.fail(
            "explicit_http_config and use_downstream_protocol_config are one choice (a oneof)"
        )
    if explicit is not None:
        ef = explicit.fields("http_protocol_options", "http2_protocol_options")
        if len(ef.present) != 1:
            explicit.fail("expected exactly one of http_protocol_options, http2_protocol_options")
        if (h1 := ef.get("http_protocol_options")) is not None:
            _http1_options(h1)
        else:
            protocol, h2 = (
                UpstreamHttpProtocol.HTTP2,
                http2_options(ef.require("http2_protocol_options")),
            )
    if downstream is not None:
        df = downstream.fields("http_protocol_options", "http2_protocol_options")
        if (h1 := df.get("http_protocol_options")) is not None:
            _http1_options(h1)
        protocol = UpstreamHttpProtocol.USE_DOWNSTREAM
        h2 = df.opt("http2_protocol_options", http2_options, Http2Options())
    common = f.get("common_http_protocol_options")
    cf = (
        common.fields("idle_timeout", "max_requests_per_connection", "max_connection_duration")
        if common
        else None
    )
    return UpstreamHttpOptions(
        http_idle_timeout=cf.opt("idle_timeout", Node.duration, DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT)
        if cf
        else DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT,
        max_requests_per_connection=cf.opt("max_requests_per_connection", lambda n: n.integer(0), 0)
        if cf
        else 0,
        max_connection_duration=cf.opt("max_connection_duration", Node.duration, 0.0)
        if cf
        else 0.0,
        upstream_http_protocol=protocol,
        http2_options=h2,
    )
