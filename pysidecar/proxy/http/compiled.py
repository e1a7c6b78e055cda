"""An HTTP connection manager config made ready for the data path, once per config.

Promises:
- `compiled(hcm, direction)` returns the same `CompiledHcm` for the same config object and
  listener direction (a per-process cache keyed by identity, bounded), so connections never
  compile routes, regexes or header blocks themselves.
- Everything the hot path needs is precomputed here: the route table, the server header,
  whether decorator operations are sent, the HTTP filter chain (`filter.build_chain`) and
  which of its filters see responses.
"""

from __future__ import annotations

from pysidecar.model import TrafficDirection
from pysidecar.model.http import HttpConnectionManager
from pysidecar.proxy.http.filter import StreamFilter, build_chain
from pysidecar.proxy.http.route_table import RouteTable

# Configs seen by this process; reloads add entries, so the cache is cleared when it grows.
_CACHE_LIMIT = 256


class CompiledHcm:
    __slots__ = (
        "config",
        "decorate",
        "decorate_response",
        "edge",
        "egress",
        "encoders",
        "encoders_touch_noted",
        "filters",
        "header_count_limit",
        "header_limit",
        "server",
        "server_header",
        "table",
        "underscores",
        "upgrades",
        "xfcc_details",
        "xfcc_mode",
    )

    def __init__(self, config: HttpConnectionManager, direction: TrafficDirection) -> None:
        self.config = config
        self.table = RouteTable.build(config.route_config)
        self.server = config.server_name.encode("latin-1")
        self.server_header = (b"server", self.server)  # one tuple for every response
        # Checked on Envoy 1.40: the decorator header needs both tracing and an outbound listener.
        self.decorate = config.tracing and direction is TrafficDirection.OUTBOUND
        # ...and on an inbound listener Envoy returns the operation to the caller instead.
        self.decorate_response = config.tracing and direction is TrafficDirection.INBOUND
        # Envoy's tracing operation: EGRESS on outbound listeners (CLIENT spans), else INGRESS.
        self.egress = direction is TrafficDirection.OUTBOUND
        self.header_limit = config.max_request_headers_kb * 1024
        self.edge = config.use_remote_address
        self.xfcc_mode = config.forward_client_cert_details
        self.xfcc_details = config.set_current_client_cert_details
        self.header_count_limit = config.max_headers_count
        # headers_with_underscores_action: 0 ALLOW, 1 REJECT_REQUEST, 2 DROP_HEADER.
        self.underscores = ("ALLOW", "REJECT_REQUEST", "DROP_HEADER").index(
            config.headers_with_underscores_action
        )
        self.upgrades = frozenset(u.encode() for u in config.upgrade_types)
        self.filters: tuple[StreamFilter, ...] = build_chain(config)
        # The filters that see response heads, in config order as before the chain existed
        # (Envoy runs encoders in reverse: the same for one Lua filter, the usual case).
        self.encoders = tuple(f for f in self.filters if f.encodes)
        # Whether the encoders' additions need the general header path (active_stream.py).
        self.encoders_touch_noted = any(f.touches_noted for f in self.encoders)


_cache: dict[tuple[int, TrafficDirection], CompiledHcm] = {}


def compiled(config: HttpConnectionManager, direction: TrafficDirection) -> CompiledHcm:
    key = (id(config), direction)
    found = _cache.get(key)
    # The entry holds the config, so its id cannot be reused while cached; the identity
    # check guards against an entry surviving a clear-and-reuse race anyway.
    if found is None or found.config is not config:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        found = _cache[key] = CompiledHcm(config, direction)
    return found
