"""envoy.filters.http.lua: the script's envoy_on_request / envoy_on_response in the filter chain.

Promises:
- The script (pysidecar/proxy/lua/script.py) is loaded once per worker, on the first stream,
  and runs in a real LuaJIT VM; each call gets its own coroutine and handle.
- decode_headers: envoy_on_request sees the request as Envoy's Lua filter does (`:method`,
  `:scheme`, `:authority`, `:path`, then the headers the upstream request will carry so far:
  the client's, x-forwarded-proto, x-request-id, the decorator) and changes them in place; the
  router's own headers come after. A changed `:path` / `:authority` goes upstream and the
  route is chosen again with the changed headers (Envoy's clear_route_cache, on by default).
  `body()` stops the chain until the whole request body is in (a body over the connection's
  buffer limit is Envoy's 413), then the call resumes; `setBytes` replaces the body sent
  upstream and its content-length. `respond(headers, body)` answers locally: the script's
  headers, content-length and content-type, the encoder filters (this script's
  envoy_on_response too, as on Envoy), date, server.
- encode_headers: envoy_on_response sees `:status` and the response headers and changes them
  (a changed `:status` is not sent: the status line is already decided here). `body()` there
  is an error: pysidecar does not buffer response bodies for filters (README).
- A script error (Lua error, bad handle use, the instruction budget) is logged as Envoy logs it
  (`script log: ...`, error level) and the stream goes on with the changes made so far: Envoy
  1.40 does the same (checked: no 500).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pysidecar.model.http import HttpFilter, LuaConfig
from pysidecar.proxy.http.filters.base import PassThroughFilter
from pysidecar.proxy.http.headers import APPEND
from pysidecar.proxy.lua.script import LuaCall, LuaScript, Outcome
from pysidecar.proxy.lua.wrappers import Body, HeaderMap, StreamInfoView

if TYPE_CHECKING:
    from pysidecar.proxy.http.active_stream import ActiveStream
    from pysidecar.proxy.http.headers import Headers

RESPOND_DETAILS = "lua_response"


class LuaFilter(PassThroughFilter):
    __slots__ = ("_script", "lua")

    def __init__(self, config: HttpFilter) -> None:
        super().__init__(config)
        self.lua = config.lua or LuaConfig("")
        self._script: LuaScript | None = None
        self.encodes = "envoy_on_response" in self.lua.code
        self.touches_noted = True  # a script may set anything

    def script(self) -> LuaScript:
        if self._script is None:
            self._script = LuaScript(self.lua.code)
            self.encodes = self._script.on_response is not None
        return self._script

    # -- request ---------------------------------------------------------------------------
    def decode_headers(self, stream: ActiveStream) -> bool:
        script = self.script()
        if script.on_request is None:
            return True
        up = stream.up_headers
        host = up[0][1] if up and up[0][0] == b"host" else stream.host.encode("latin-1")
        rest = up[1:] if up and up[0][0] == b"host" else list(up)
        pseudo = {
            b":method": stream.method, b":scheme": stream.conn.scheme, b":authority": host, b":path": stream.target,
        }  # fmt: skip
        headers = HeaderMap(pseudo, rest)
        call = script.call(False, headers, lambda: _info(stream))
        assert call is not None
        return self._request_outcome(stream, call, call.start())

    def _request_outcome(self, stream: ActiveStream, call: LuaCall, outcome: Outcome) -> bool:
        if outcome.kind == "body":
            if not stream.has_body or stream.request_done:
                return self._request_outcome(stream, call, call.resume_body(_body(stream)))
            stream.body_waiter = lambda: self._body_arrived(stream, call)
            return False
        self._apply_request(stream, call.headers)
        if outcome.kind == "respond":
            self._respond(stream, outcome)
            return False
        return True

    def _body_arrived(self, stream: ActiveStream, call: LuaCall) -> None:
        body = _body(stream)
        outcome = call.resume_body(body)
        if body is not None and body.changed:
            stream.body_parts = [body.data]
            stream.body_bytes = len(body.data)
            if stream.content_length is not None:
                stream.content_length = str(len(body.data)).encode()
                call.headers.replace(b"content-length", stream.content_length)
        if self._request_outcome(stream, call, outcome):
            stream.continue_decoding()
            if stream.router is not None and not stream.response_done:
                stream.router.decode_complete(stream.has_body)

    def _apply_request(self, stream: ActiveStream, headers: HeaderMap) -> None:
        if not headers.changed:
            stream.up_headers = [stream.up_headers[0], *headers.headers] if stream.up_headers else headers.headers
            return
        authority = headers.pseudo.get(b":authority", b"")
        path = headers.pseudo.get(b":path", stream.target)
        stream.up_headers = [(b"host", authority), *headers.headers]
        stream.host = authority.decode("latin-1")
        stream.target = path
        stream.path = path.decode("latin-1")
        stream.route_request(stream.up_headers)

    def _respond(self, stream: ActiveStream, outcome: Outcome) -> None:
        stream.response_ops = tuple((APPEND, k, v) for k, v in outcome.headers or ())
        stream.local_reply(outcome.status, outcome.body, (), RESPOND_DETAILS)

    # -- response --------------------------------------------------------------------------
    def encode_headers(self, stream: ActiveStream, headers: Headers) -> Headers:
        script = self.script()
        if script.on_response is None:
            return headers
        status = stream.info.response_code or 0
        m = HeaderMap({b":status": b"%d" % status}, list(headers))
        call = script.call(True, m, lambda: _info(stream))
        assert call is not None
        call.start()  # done or failed (logged): either way the headers as the script left them
        return m.headers


def _body(stream: ActiveStream) -> Body | None:
    return Body(b"".join(stream.body_parts)) if stream.has_body else None


def _info(stream: ActiveStream) -> StreamInfoView:
    conn = stream.conn
    info = stream.info
    return StreamInfoView(
        protocol=info.protocol or "HTTP/1.1",
        downstream_local_address=getattr(conn, "local_address", None) or "",
        downstream_remote_address=getattr(conn, "peer", None) or "",
        requested_server_name=getattr(conn, "server_name", None) or "",
        route_name=info.route_name or "",
    )

