"""What an upstream codec tells the router side of one request: the stream-facing interface.

Promises:
- `UpstreamStreamCallbacks` is the whole vocabulary an upstream stream (HTTP/2 today; the
  HTTP/1 codec calls the same names, codec.ResponseDecoder) uses toward its request: response
  head, 100 Continue, body pieces, trailers, the end of one read (a held head goes out), the
  end, a reset with Envoy's reason word, and pause / resume of the downstream's reading when
  the upstream's send side is full.
- A stream that reported `upstream_complete` or `upstream_reset` reports nothing more.
"""

from __future__ import annotations

from typing import Protocol

Headers = list[tuple[bytes, bytes]]


class UpstreamStreamCallbacks(Protocol):
    """What the router side of one request hears from its upstream stream."""

    def upstream_headers(self, status: int, headers: Headers) -> None: ...
    def upstream_continue(self) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_trailers(self, trailers: Headers) -> None: ...
    def upstream_read_done(self) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_reset(self, reason: str, failure: str | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...
