"""What an HTTP filter does for the callbacks it does not implement: let the request and the
response go on unchanged (Envoy's PassThroughFilter). Filters subclass it and override what
they act on; see `filter.StreamFilter` for the interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pysidecar.model.http import HttpFilter
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.headers import Headers


class PassThroughFilter:
    __slots__ = ("config", "encodes", "touches_noted")

    def __init__(self, config: HttpFilter) -> None:
        self.config = config
        self.encodes = False  # whether encode_headers is worth calling
        self.touches_noted = False  # whether it may change content-length / date / server

    def decode_headers(self, stream: ActiveStream) -> bool:
        return True

    def encode_headers(self, stream: ActiveStream, headers: Headers) -> Headers:
        return headers
