"""An HTTP connection manager config made ready for the data path, once per config.

Promises:
- `compiled(hcm, direction)` returns the same `CompiledHcm` for the same config object and
  listener direction (a per-process cache keyed by identity, bounded), so connections never
  compile routes, regexes or header blocks themselves.
- Everything the hot path needs is precomputed here: the route table, the server header,
  whether decorator operations are sent, the Lua header additions as header operations.
"""

from __future__ import annotations

from pysidecar.model import TrafficDirection
from pysidecar.model.http import HttpConnectionManager
from pysidecar.proxy.http.headers import APPEND, RESPONSE_NOTED, HeaderOps, touches
from pysidecar.proxy.http.router import RouteTable

# Configs seen by this process; reloads add entries, so the cache is cleared when it grows.
_CACHE_LIMIT = 256


class CompiledHcm:
    __slots__ = (
        "config",
        "decorate",
        "decorate_response",
        "edge",
        "header_count_limit",
        "header_limit",
        "lua_request",
        "lua_response",
        "lua_touches_noted",
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
        req: list[tuple[int, bytes, bytes]] = []
        resp: list[tuple[int, bytes, bytes]] = []
        for f in config.http_filters:
            for add in f.lua_adds:
                (resp if add.response else req).append(
                    (APPEND, add.key.encode("latin-1"), add.value.encode("latin-1"))
                )
        self.lua_request: HeaderOps = tuple(req)
        self.lua_response: HeaderOps = tuple(resp)
        # Whether the filters' response additions need the general header path (stream.py).
        self.lua_touches_noted = touches(self.lua_response, RESPONSE_NOTED)


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
