"""The HTTP filter chain: the interface every HTTP filter implements and the table that makes
a connection manager's `http_filters` into a chain (Envoy's StreamDecoderFilter /
StreamEncoderFilter and its filter factories).

Promises:
- A filter is an object made once per connection manager config, shared by its streams (what
  a filter keeps per stream lives on the stream: the fault filter's timer is
  `ActiveStream.filter_timer`, the router's attempts are a `Router`).
- `decode_headers(stream)` runs in chain order once the connection manager has the request's
  route; it returns True to let the next filter run, False when it took the request over (a
  fault's delay resumes the chain with `stream.continue_decoding()`, an abort answers with a
  local reply; the router, always last, sends it upstream).
- `encode_headers(stream, headers)` runs on every response head (upstream or local reply),
  for the filters whose `encodes` is true, and returns the headers to go on with.
  `touches_noted` says it may change content-length / date / server, which the stream then
  re-checks.
- `build_chain(config)` is the one table from filter type to implementation
  (`FILTER_TYPES`): a new HTTP filter is one module under `filters/` and one line there. The
  config front ends refuse filter types we do not implement, so the table covers them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pysidecar.model.http import HttpConnectionManager, HttpFilter
from pysidecar.model.rbac import RBAC_HTTP_TYPE
from pysidecar.proxy.http.filters.fault import FaultFilter
from pysidecar.proxy.http.filters.lua import LuaFilter
from pysidecar.proxy.http.filters.rbac import RbacFilter
from pysidecar.proxy.http.router_filter import RouterFilter

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.headers import Headers


class StreamFilter(Protocol):
    """One HTTP filter, as the chain calls it."""

    encodes: bool
    touches_noted: bool

    def decode_headers(self, stream: ActiveStream) -> bool: ...

    def encode_headers(self, stream: ActiveStream, headers: Headers) -> Headers: ...


# The type URLs the config front ends accept (config/envoy_hcm.py), each to its filter.
FILTER_TYPES: dict[str, Callable[[HttpFilter], StreamFilter]] = {
    "envoy.extensions.filters.http.fault.v3.HTTPFault": FaultFilter,
    "envoy.extensions.filters.http.lua.v3.Lua": LuaFilter,
    "envoy.extensions.filters.http.router.v3.Router": RouterFilter,
    RBAC_HTTP_TYPE: RbacFilter,
}


def build_chain(config: HttpConnectionManager) -> tuple[StreamFilter, ...]:
    """The decoder chain, router last. A config built in code without filters (tests, the
    demo) gets the router alone; one without a fault filter still honours route faults, as
    before the chain existed (the Envoy and Istio front ends always list it when routes
    inject faults)."""
    chain = [FILTER_TYPES[f.type_url](f) for f in config.http_filters if f.type_url in FILTER_TYPES]
    faults = any(r.fault is not None for vh in config.route_config.virtual_hosts for r in vh.routes)
    if faults and not any(isinstance(f, FaultFilter) for f in chain):
        chain.insert(0, FaultFilter(HttpFilter("envoy.filters.http.fault", "")))
    if not chain or not isinstance(chain[-1], RouterFilter):
        chain = [f for f in chain if not isinstance(f, RouterFilter)]
        chain.append(RouterFilter(HttpFilter("envoy.filters.http.router", "")))
    return tuple(chain)
