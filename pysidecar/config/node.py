"""A checked walk over parsed YAML: every value knows its file and YAML path.

Promises:
- Every error a config front end raises is a `ConfigError` naming the file, the YAML path
  (`static_resources.listeners[0].address.socket_address.port_value`) and what was expected.
- `Node.fields(...)` refuses keys it was not told about, so a typo'd or unsupported field is an
  error, never silently ignored.
- Both spellings protobuf's JSON mapping allows are accepted (`port_value` and `portValue`):
  Envoy's YAML uses the first, `istioctl proxy-config -o yaml` prints the second.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import yaml

from pysidecar.regex import re2_error

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, located: file, YAML path, what was expected."""

    def __init__(self, file: str, path: str, message: str) -> None:
        super().__init__(f"{file}: {path or '<root>'}: {message}")
        self.file = file
        self.path = path
        self.message = message


def camel_case(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"


TYPE_PREFIX = "type.googleapis.com/"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|ms|m|h)?$")
# protoc-gen-validate's non-strict HTTP_HEADER_NAME / HTTP_HEADER_VALUE: only these three are refused.
_HEADER_FORBIDDEN = re.compile(r"[\x00\r\n]")


@dataclass(frozen=True, slots=True)
class Node:
    value: Any
    file: str
    path: str = ""

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(self.file, self.path, message)

    def child(self, key: str | int, value: Any) -> Node:
        if isinstance(key, int):
            return Node(value, self.file, f"{self.path}[{key}]")
        return Node(value, self.file, f"{self.path}.{key}" if self.path else key)

    # -- shapes -------------------------------------------------------------------------
    def fields(self, *allowed: str) -> Fields:
        """This node as a mapping whose keys must be among `allowed` (snake_case names)."""
        if self.value is None:
            return Fields(self, {})
        if not isinstance(self.value, dict):
            self.fail(f"expected a mapping, got {_describe(self.value)}")
        by_spelling = {name: name for name in allowed}
        by_spelling.update({camel_case(name): name for name in allowed})
        seen: dict[str, Node] = {}
        for key, value in self.value.items():
            canonical = by_spelling.get(str(key))
            if canonical is None:
                where = self.child(str(key), value)
                where.fail(
                    f"unknown or unsupported field {key!r}; expected one of: "
                    + ", ".join(sorted(allowed))
                )
            seen[canonical] = self.child(str(key), value)
        return Fields(self, seen)

    def items(self) -> list[Node]:
        if self.value is None:
            return []
        if not isinstance(self.value, list):
            self.fail(f"expected a list, got {_describe(self.value)}")
        return [self.child(i, v) for i, v in enumerate(self.value)]

    # -- scalars ------------------------------------------------------------------------
    def string(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, str | int | float):
            self.fail(f"expected a string, got {_describe(self.value)}")
        return str(self.value)

    # -- Envoy's proto validation rules (protoc-gen-validate), as `envoy --mode validate` applies
    # them: values Envoy refuses are refused here too, with the rule named.
    def nonempty(self) -> str:
        """A string under `(validate.rules).string = {min_len: 1}`."""
        s = self.string()
        if not s:
            self.fail("expected a non-empty string (Envoy's validation: min_len 1)")
        return s

    def header_name(self) -> str:
        """`{min_len: 1, well_known_regex: HTTP_HEADER_NAME, strict: false}`: no NUL, CR, LF."""
        s = self.nonempty()
        if _HEADER_FORBIDDEN.search(s):
            self.fail(f"expected an HTTP header name without NUL, CR or LF, got {s!r}")
        return s

    def header_value(self) -> str:
        """`{well_known_regex: HTTP_HEADER_VALUE, strict: false}`: no NUL, CR, LF."""
        s = self.string()
        if _HEADER_FORBIDDEN.search(s):
            self.fail(f"expected an HTTP header value without NUL, CR or LF, got {s!r}")
        return s

    def positive_duration(self) -> float:
        """A Duration under `(validate.rules).duration = {gt {}}`."""
        d = self.duration()
        if d <= 0:
            self.fail(f"expected a duration above 0 (Envoy's validation: gt 0s), got {_describe(self.value)}")
        return d

    def integer(self, minimum: int | None = None, maximum: int | None = None) -> int:
        v = self.value
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(f"expected an integer, got {_describe(self.value)}")
        if minimum is not None and v < minimum:
            self.fail(f"expected an integer >= {minimum}, got {v}")
        if maximum is not None and v > maximum:
            self.fail(f"expected an integer <= {maximum}, got {v}")
        return v

    def port(self) -> int:
        return self.integer(0, 65535)

    def regex(self) -> str:
        """A pattern RE2 compiles (Envoy's and istiod's dialect, not Python's `re`)."""
        pattern = self.string()
        if (err := re2_error(pattern)) is not None:
            self.fail(f"invalid regex {pattern!r} (RE2 syntax, as Envoy and istiod check it): {err}")
        return pattern

    def boolean(self) -> bool:
        v = self.value
        if isinstance(v, dict) and set(v) == {"value"}:  # google.protobuf.BoolValue
            v = v["value"]
        if not isinstance(v, bool):
            self.fail(f"expected true or false, got {_describe(self.value)}")
        return v

    def duration(self) -> float:
        """A google.protobuf.Duration: "1.5s", "250ms", "1h", or {seconds, nanos}."""
        v = self.value
        if isinstance(v, dict):
            f = self.fields("seconds", "nanos")
            seconds = f.get("seconds")
            nanos = f.get("nanos")
            return float(seconds.integer(0) if seconds else 0) + (
                nanos.integer(0, 999_999_999) / 1e9 if nanos else 0.0
            )
        if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
            return float(v)
        m = _DURATION.match(str(v).strip()) if isinstance(v, str) else None
        if m is None:
            self.fail(f'expected a duration such as "10s", "0.25s" or "250ms", got {_describe(v)}')
        scale = {"s": 1.0, None: 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}[m.group(2)]
        return float(m.group(1)) * scale

    def type_url(self) -> str:
        """The `@type` of a typed_config, without the type.googleapis.com/ prefix."""
        if not isinstance(self.value, dict) or "@type" not in self.value:
            self.fail("expected a typed_config with an '@type'")
        return self.child("@type", self.value["@type"]).string().removeprefix(TYPE_PREFIX)

    def enum(self, choices: Iterable[str]) -> str:
        s = self.string()
        options = list(choices)
        if s not in options:
            self.fail(f"expected one of {', '.join(options)}, got {s!r}")
        return s


@dataclass(frozen=True, slots=True)
class Fields:
    """The checked keys of a mapping node, looked up by their snake_case names."""

    node: Node
    present: dict[str, Node]

    def get(self, name: str) -> Node | None:
        return self.present.get(name)

    def require(self, name: str) -> Node:
        found = self.present.get(name)
        if found is None:
            self.node.fail(f"missing required field {name!r}")
        return found

    def opt(self, name: str, convert: Callable[[Node], T], default: T) -> T:
        """`convert(node)` when the field is present, else `default`."""
        found = self.present.get(name)
        return default if found is None else convert(found)

    def list(self, name: str) -> list[Node]:
        """The items of a list field; an absent field is an empty list."""
        found = self.present.get(name)
        return [] if found is None else found.items()

    def __contains__(self, name: str) -> bool:
        return name in self.present

    def __iter__(self) -> Iterator[str]:
        return iter(self.present)


def load_documents(path: str) -> list[Node]:
    """Every YAML document in a file, as root nodes; YAML syntax errors become ConfigErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, where, f"invalid YAML: {problem}") from e
    return [Node(d, path) for d in docs if d is not None]
