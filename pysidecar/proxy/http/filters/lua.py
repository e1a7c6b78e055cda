"""envoy.filters.http.lua, the one shape we run: `headers():add("k", "v")` in envoy_on_request /
envoy_on_response (the config front end refuses any other Lua).

Promises: on the request, the adds are appended to the upstream request's headers after the
connection manager's own and before the router's (Envoy's filter order); on every response
(upstream or local reply) they are appended before date and server. Precomputed as header
operations once per config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.model.http import HttpFilter
from pysidecar.proxy.http.filters.base import PassThroughFilter
from pysidecar.proxy.http.headers import APPEND, RESPONSE_NOTED, HeaderOps, apply_ops, touches

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.headers import Headers


class LuaFilter(PassThroughFilter):
    __slots__ = ("request_ops", "response_ops")

    def __init__(self, config: HttpFilter) -> None:
        super().__init__(config)
        req: list[tuple[int, bytes, bytes]] = []
        resp: list[tuple[int, bytes, bytes]] = []
        for add in config.lua_adds:
            (resp if add.response else req).append(
                (APPEND, add.key.encode("latin-1"), add.value.encode("latin-1"))
            )
        self.request_ops: HeaderOps = tuple(req)
        self.response_ops: HeaderOps = tuple(resp)
        self.encodes = bool(resp)
        self.touches_noted = touches(self.response_ops, RESPONSE_NOTED)

    def decode_headers(self, stream: ActiveStream) -> bool:
        if self.request_ops:
            stream.up_headers = apply_ops(stream.up_headers, self.request_ops)
        return True

    def encode_headers(self, stream: ActiveStream, headers: Headers) -> Headers:
        return apply_ops(headers, self.response_ops)
