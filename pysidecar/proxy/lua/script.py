"""One Lua script of envoy.filters.http.lua, loaded in a worker's Lua VM, run per stream.

Promises:
- `LuaScript(code)` is Envoy's per-worker script state: a LuaJIT VM (lupa's luajit21, the VM
  Envoy embeds; JIT off so the instruction hook sees every instruction) that ran the script's
  top level once. `envoy_on_request` / `envoy_on_response` are looked up there (absent: that
  direction does nothing). Globals persist across streams of a worker, as on Envoy; each call
  gets its own coroutine and its own handle, which is dead after the call (using a kept
  handle later is Envoy's error "object used outside of proper scope").
- `LuaCall.start()` / `.resume_body(...)` run one call until it ends, fails, answers, or asks
  for the body: an `Outcome` says which. `body()` yields to the stream, which resumes the call
  with the whole buffered body (or None when the message has none), as Envoy's body() does.
  `respond(headers, body)` ends the call with a local reply (request direction only).
- Errors (a Lua error, a bad handle call, the CPU budget) end the call with kind "error" and
  the message Envoy logs (`[string "<first line>..."]:<line>: <message>`); the stream goes on
  with the changes made so far, as Envoy 1.40 does (checked: no 500, the request proceeds).
  They are logged as Envoy logs them: `script log: <message>` at error level.
- Every resume runs under an instruction budget (`INSTRUCTION_LIMIT`): a runaway loop is an
  error after it, never a stuck worker (Envoy has no such bound).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from lupa import luajit21

from pysidecar.proxy.lua.wrappers import Body, HeaderMap, LuaUsageError, StreamInfoView

log = logging.getLogger("pysidecar.lua")

# About 75 ms of LuaJIT's interpreter: far above what header scripts need, short enough that a
# `while true do end` costs one slow request, not a worker.
INSTRUCTION_LIMIT: Final = 10_000_000

Kind = Literal["done", "error", "respond", "body"]


@dataclass(slots=True)
class Outcome:
    kind: Kind
    error: str = ""
    status: int = 0
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytes = b""


_PRELUDE = rb"""
local py, limit = ...
-- Envoy builds LuaJIT with 5.2 compatibility: pairs() honours __pairs.
local rawpairs = pairs
pairs = function(t)
  local mt = getmetatable(t)
  if mt and mt.__pairs then return mt.__pairs(t) end
  return rawpairs(t)
end

local function check(ok, v)
  if not ok then error(v, 3) end
  return v
end
local function alive(o)
  if not o._alive[1] then error("object used outside of proper scope", 3) end
end

local Headers = {}
Headers.__index = Headers
function Headers:get(k) alive(self) return check(py.hget(self._m, k)) end
function Headers:getNumValues(k) alive(self) return check(py.hnum(self._m, k)) end
function Headers:getAtIndex(k, i) alive(self) return check(py.hat(self._m, k, i)) end
function Headers:add(k, v) alive(self) check(py.hadd(self._m, k, v)) end
function Headers:replace(k, v) alive(self) check(py.hreplace(self._m, k, v)) end
function Headers:remove(k) alive(self) check(py.hremove(self._m, k)) end
Headers.__pairs = function(self)
  alive(self)
  local flat = check(py.hitems(self._m))
  local i = -1
  return function()
    i = i + 2
    if flat[i] ~= nil then return flat[i], flat[i + 1] end
  end, self, nil
end

local Body = {}
Body.__index = Body
function Body:length() alive(self) return check(py.blen(self._b)) end
function Body:getBytes(i, n) alive(self) return check(py.bget(self._b, i, n)) end
function Body:setBytes(s) alive(self) return check(py.bset(self._b, s)) end

local Info = {}
Info.__index = Info
for _, name in ipairs({"protocol", "downstreamLocalAddress", "downstreamDirectRemoteAddress",
                       "downstreamRemoteAddress", "requestedServerName", "routeName"}) do
  Info[name] = function(self) alive(self) return check(py.info(self._v, name)) end
end
local Metadata = {}
Metadata.__index = Metadata
function Metadata:get(k) alive(self) return self._t[k] end
function Metadata:set(ns, k, v)
  alive(self)
  self._t[ns] = self._t[ns] or {}
  self._t[ns][k] = v
end
function Info:dynamicMetadata() alive(self) return self._md end

local Handle = {}
Handle.__index = Handle
function Handle:headers() alive(self) return self._headers end
function Handle:streamInfo()
  alive(self)
  if self._info == nil then  -- made on first use: most scripts never ask
    self._info = setmetatable({_v = self._src, _alive = self._alive,
                               _md = setmetatable({_t = {}, _alive = self._alive}, Metadata)}, Info)
  end
  return self._info
end
function Handle:trailers() alive(self) return nil end
function Handle:metadata() alive(self) return setmetatable({_t = {}, _alive = self._alive}, Metadata) end
function Handle:connection()
  alive(self)
  return {ssl = function() return nil end}
end
function Handle:body()
  alive(self)
  if self._response then
    error("body() in envoy_on_response is not supported by pysidecar (response bodies are not buffered)", 2)
  end
  if self._body == nil and not self._no_body then
    -- As on Envoy: a headers object taken before body() is dead after it; headers() again
    -- gives a live one.
    self._headers._alive = {false}
    self._headers = setmetatable({_m = self._map, _alive = self._alive}, Headers)
    local b = coroutine.yield("body")
    if b == nil then
      self._no_body = true
    else
      self._body = setmetatable({_b = b, _alive = self._alive}, Body)
    end
  end
  return self._body
end
function Handle:respond(headers, body)
  alive(self)
  if self._response then error("respond() cannot be called in envoy_on_response", 2) end
  if type(headers) ~= "table" then error("respond() needs a table of headers", 2) end
  coroutine.yield("respond", headers, body)
end
for level, name in ipairs({"logTrace", "logDebug", "logInfo", "logWarn", "logErr", "logCritical"}) do
  Handle[name] = function(self, msg) alive(self) py.log(level, msg) end
end

local function step(call, ...)
  debug.sethook(function() error("script exceeded its CPU budget of " .. limit .. " instructions", 2) end, "", limit)
  local ok, a, b, c = coroutine.resume(call.co, ...)
  debug.sethook()
  if not ok then
    call.alive[1] = false
    return "error", tostring(a)
  end
  if coroutine.status(call.co) == "dead" then
    call.alive[1] = false
    return "done"
  end
  if a == "respond" then
    call.alive[1] = false
    return "respond", b, c
  end
  return a
end

local function handle(map, src, response, alive)
  local h = setmetatable({_alive = alive, _response = response, _map = map, _src = src}, Handle)
  h._headers = setmetatable({_m = map, _alive = alive}, Headers)
  return h
end

local function begin(fn, map, src, response)
  local alive = {true}
  local call = {co = coroutine.create(fn), alive = alive}
  return call, step(call, handle(map, src, response, alive))
end

-- envoy_on_response cannot yield (no body(), no respond()): one protected call, no coroutine.
local function once(fn, map, src)
  local alive = {true}
  local h = handle(map, src, true, alive)
  debug.sethook(function() error("script exceeded its CPU budget of " .. limit .. " instructions", 2) end, "", limit)
  local ok, e = pcall(fn, h)
  debug.sethook()
  alive[1] = false
  if not ok then return "error", tostring(e) end
  return "done"
end

local function load(code)
  local chunk, err = loadstring(code)
  if not chunk then return nil, err end
  debug.sethook(function() error("script exceeded its CPU budget of " .. limit .. " instructions", 2) end, "", limit)
  local ok, e = pcall(chunk)
  debug.sethook()
  if not ok then return nil, tostring(e) end
  return envoy_on_request, envoy_on_response
end

return begin, step, load, once
"""

_LEVELS = {1: 5, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING, 5: logging.ERROR, 6: logging.CRITICAL}
_INFO = {
    b"protocol": "protocol",
    b"downstreamLocalAddress": "downstream_local_address",
    b"downstreamDirectRemoteAddress": "downstream_remote_address",
    b"downstreamRemoteAddress": "downstream_remote_address",
    b"requestedServerName": "requested_server_name",
    b"routeName": "route_name",
}


def _guard(fn: Callable[..., Any]) -> Callable[..., tuple[bool, Any]]:
    """A helper as Lua calls it: (true, result), or (false, message) for Lua to raise."""

    def call(*args: Any) -> tuple[bool, Any]:
        try:
            return True, fn(*args)
        except LuaUsageError as e:
            return False, str(e).encode()
        except (TypeError, ValueError) as e:
            return False, f"bad argument: {e}".encode()

    return call


def _info(source: Callable[[], StreamInfoView], name: bytes) -> bytes | None:
    value = getattr(source(), _INFO[name])
    return value.encode("latin-1") if value else None


def _log(level: int, message: object) -> None:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    log.log(_LEVELS.get(level, logging.INFO), "script log: %s", text)


class LuaLoadError(Exception):
    pass


def _runtime() -> Any:
    return luajit21.LuaRuntime(encoding=None, unpack_returned_tuples=True, register_eval=False, register_builtins=False)


class LuaScript:
    __slots__ = ("_begin", "_once", "_step", "on_request", "on_response", "runtime")

    def __init__(self, code: str, limit: int = INSTRUCTION_LIMIT) -> None:
        rt = self.runtime = _runtime()
        rt.execute(b"jit.off()")
        helpers = rt.table_from({
            b"hget": _guard(HeaderMap.get), b"hnum": _guard(HeaderMap.num_values),
            b"hat": _guard(lambda m, k, i: m.at_index(k, int(i))), b"hadd": _guard(HeaderMap.add),
            b"hreplace": _guard(HeaderMap.replace), b"hremove": _guard(HeaderMap.remove),
            b"hitems": _guard(lambda m: rt.table_from([x for kv in m.items() for x in kv])),
            b"blen": _guard(Body.length), b"bget": _guard(lambda b, i, n: b.get_bytes(int(i), int(n))),
            b"bset": _guard(Body.set_bytes), b"info": _guard(_info), b"log": _log,
        })  # fmt: skip
        self._begin, self._step, load, self._once = rt.execute(_PRELUDE, helpers, limit)
        on_request, on_response = load(code.encode("utf-8"))
        if on_request is None and isinstance(on_response, bytes):
            raise LuaLoadError(on_response.decode("utf-8", "replace"))
        self.on_request = on_request
        self.on_response = on_response

    def call(self, response: bool, headers: HeaderMap, info: Callable[[], StreamInfoView]) -> LuaCall | None:
        """`info` makes the streamInfo() view, called only if the script asks for it."""
        fn = self.on_response if response else self.on_request
        return LuaCall(self, fn, headers, info, response) if fn is not None else None


class LuaCall:
    """One envoy_on_request / envoy_on_response call on one stream."""

    __slots__ = ("_call", "_fn", "headers", "info", "response", "script")

    def __init__(
        self, script: LuaScript, fn: Any, headers: HeaderMap, info: Callable[[], StreamInfoView], response: bool
    ) -> None:
        self.script = script
        self._fn = fn
        self.headers = headers
        self.info = info
        self.response = response
        self._call: Any = None

    def start(self) -> Outcome:
        if self.response:  # cannot yield: one protected call (cheaper than a coroutine)
            return self._outcome(list(_as_tuple(self.script._once(self._fn, self.headers, self.info))))
        call, *rest = self.script._begin(self._fn, self.headers, self.info, self.response)
        self._call = call
        return self._outcome(rest)

    def resume_body(self, body: Body | None) -> Outcome:
        return self._outcome(list(_as_tuple(self.script._step(self._call, body))))

    def _outcome(self, rest: list[Any]) -> Outcome:
        kind = rest[0].decode() if isinstance(rest[0], bytes) else str(rest[0])
        if kind == "error":
            message = rest[1].decode("utf-8", "replace") if isinstance(rest[1], bytes) else str(rest[1])
            log.error("script log: %s", message)
            return Outcome("error", error=message)
        if kind == "respond":
            return _respond(rest[1], rest[2] if len(rest) > 2 else None)
        if kind == "body":
            return Outcome("body")
        return Outcome("done")


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


def _respond(table: Any, body: Any) -> Outcome:
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    for k, v in table.items():
        name = k.lower() if isinstance(k, bytes) else str(k).lower().encode()
        value = v if isinstance(v, bytes) else str(v).encode()
        if name == b":status":
            status = int(value) if value.isdigit() else 0
        else:
            headers.append((name, value))
    if not 200 <= status <= 999 and not 100 <= status < 200:
        message = ":status must be set to a valid HTTP status in respond()"
        log.error("script log: %s", message)
        return Outcome("error", error=message)
    data = body if isinstance(body, bytes) else (str(body).encode() if body is not None else b"")
    return Outcome("respond", status=status, headers=headers, body=data)
