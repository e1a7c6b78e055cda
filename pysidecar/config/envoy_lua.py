"""envoy.extensions.filters.http.lua.v3.Lua in Envoy YAML: the scripts, checked at load.

Promises:
- `lua_filter(config)` takes `default_source_code` (a DataSource: inline_string, or filename
  read now) or the deprecated `inline_code`, and `source_codes` (name → DataSource), and
  compiles each with LuaJIT (Envoy's VM) so a syntax error is a config error naming the YAML
  path and LuaJIT's message, as Envoy refuses the script at load. No script at all is Envoy's
  empty default: a filter that does nothing.
- Nothing is run here: the scripts' top level runs once per worker (pysidecar/proxy/lua).
"""

from __future__ import annotations

from lupa import luajit21

from pysidecar.config.node import Node
from pysidecar.model.http import LuaConfig


def _syntax_error(code: str) -> str | None:
    runtime = luajit21.LuaRuntime(encoding=None, unpack_returned_tuples=True, register_eval=False, register_builtins=False)
    result = runtime.globals().loadstring(code.encode("utf-8"))
    if isinstance(result, tuple) and result[0] is None:  # (nil, message)
        message = result[1]
        return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return None


def _source(node: Node) -> str:
    f = node.fields("filename", "inline_string", "inline_bytes")
    given = [k for k in ("filename", "inline_string", "inline_bytes") if k in f]
    if len(given) != 1:
        node.fail("expected exactly one of filename, inline_string, inline_bytes")
    if "filename" in f:
        path = f.require("filename").nonempty()
        try:
            with open(path, encoding="utf-8") as fh:
                code = fh.read()
        except OSError as e:
            f.require("filename").fail(f"cannot read the Lua script: {e.strerror}")
    else:
        code = f.require(given[0]).string()
    _check(node, code)
    return code


def _check(node: Node, code: str) -> None:
    if (err := _syntax_error(code)) is not None:
        node.fail(f"Lua script does not compile: {err}")


def lua_filter(config: Node) -> LuaConfig:
    f = config.fields("@type", "inline_code", "default_source_code", "source_codes", "stat_prefix", "clear_route_cache")
    if "inline_code" in f and "default_source_code" in f:
        config.fail("set either 'inline_code' or 'default_source_code', not both")
    code = ""
    if (inline := f.get("inline_code")) is not None:
        code = inline.string()
        _check(inline, code)
    elif (default := f.get("default_source_code")) is not None:
        code = _source(default)
    named: list[tuple[str, str]] = []
    if (sc := f.get("source_codes")) is not None:
        if not isinstance(sc.value, dict):
            sc.fail("expected a mapping of names to data sources")
        named = [(str(k), _source(sc.child(str(k), v))) for k, v in sc.value.items()]
    f.opt("stat_prefix", Node.string, "")
    f.opt("clear_route_cache", Node.boolean, True)
    return LuaConfig(code, tuple(named))
