"""The Python side of Envoy's Lua stream handle: header maps, bodies, stream info.

Promises:
- `HeaderMap` wraps one header list (`list[tuple[bytes, bytes]]`, lower-case names, wire order)
  plus its pseudo-headers (`:method`, `:path`, `:authority`, `:scheme` on a request, `:status`
  on a response), as Envoy's HeaderMapWrapper shows them to a script: `get` joins repeated
  values with "," (Envoy's HeaderMap::get of a multi-valued header), `getNumValues`,
  `getAtIndex`, `add` appends, `replace` drops every occurrence and appends the new value at
  the end (Envoy's setCopy: checked, a replaced header moves to the end), `remove` drops
  every occurrence; `items` is what `pairs()` walks, pseudo-headers
  first. Names are matched lower-case, as Envoy's header maps do.
- `Body` is a buffered body for `body()`: `length`, `getBytes(index, length)` (Envoy's bounds
  check: an error outside the body), `setBytes` replaces it and marks it changed.
- `StreamInfoView` answers the streamInfo() methods learners use from the stream's facts.
- Values cross into Lua as bytes (lupa with no encoding): header bytes stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


class LuaUsageError(Exception):
    """A script called a handle method wrongly (Envoy raises a Lua error for these)."""


def _name(key: object) -> bytes:
    if isinstance(key, bytes):
        return key.lower()
    if isinstance(key, str):
        return key.encode("latin-1").lower()
    raise LuaUsageError(f"expected a header name string, got {type(key).__name__}")


def _value(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    raise LuaUsageError(f"expected a header value string, got {type(value).__name__}")


class HeaderMap:
    __slots__ = ("changed", "headers", "pseudo")

    def __init__(self, pseudo: dict[bytes, bytes], headers: Headers) -> None:
        self.pseudo = pseudo  # ordered: :method, :scheme, :authority, :path / :status
        self.headers = headers
        self.changed = False

    def get(self, key: object) -> bytes | None:
        name = _name(key)
        if name.startswith(b":"):
            return self.pseudo.get(name)
        values = [v for n, v in self.headers if n == name]
        return b",".join(values) if values else None

    def num_values(self, key: object) -> int:
        name = _name(key)
        if name.startswith(b":"):
            return int(name in self.pseudo)
        return sum(1 for n, _ in self.headers if n == name)

    def at_index(self, key: object, index: int) -> bytes | None:
        name = _name(key)
        values = [v for n, v in self.headers if n == name]
        return values[index] if 0 <= index < len(values) else None

    def add(self, key: object, value: object) -> None:
        name, v = _name(key), _value(value)
        self.changed = True
        if name.startswith(b":"):
            self.pseudo[name] = v
            return
        self.headers.append((name, v))

    def replace(self, key: object, value: object) -> None:
        name, v = _name(key), _value(value)
        self.changed = True
        if name.startswith(b":"):
            self.pseudo[name] = v
            return
        # Envoy's setCopy: every occurrence removed, the new value appended at the end.
        self.headers[:] = [h for h in self.headers if h[0] != name]
        self.headers.append((name, v))

    def remove(self, key: object) -> None:
        name = _name(key)
        self.changed = True
        if name.startswith(b":"):
            self.pseudo.pop(name, None)
            return
        self.headers[:] = [h for h in self.headers if h[0] != name]

    def items(self) -> list[tuple[bytes, bytes]]:
        return [*self.pseudo.items(), *self.headers]


class Body:
    __slots__ = ("changed", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.changed = False

    def length(self) -> int:
        return len(self.data)

    def get_bytes(self, index: int, length: int) -> bytes:
        if index < 0 or length < 0 or index + length > len(self.data):
            raise LuaUsageError("index/length must be >= 0 and (index + length) must be <= buffer size")
        return self.data[index : index + length]

    def set_bytes(self, data: object) -> int:
        self.data = _value(data)
        self.changed = True
        return len(self.data)


@dataclass
class StreamInfoView:
    """What streamInfo() reports; filled by the stream from its own facts."""

    protocol: str = "HTTP/1.1"
    downstream_local_address: str = ""
    downstream_remote_address: str = ""
    requested_server_name: str = ""
    route_name: str = ""
    dynamic_metadata: dict[str, dict[str, object]] = field(default_factory=dict)
