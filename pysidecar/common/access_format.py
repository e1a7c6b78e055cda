"""Access log formatting: Envoy's command operators over a finished StreamInfo, compiled once.

Promises:
- `compile_text(fmt)` / `compile_json(fields)` turn a format into a function StreamInfo → line.
  The format is parsed at config load into a tuple of getters; formatting a line runs the
  getters and joins, with no parsing per request. An unknown operator is a `FormatError` at load.
- Operators (Envoy's spelling): START_TIME[(strftime, with %3f %6f %9f)], REQ(A?B)[:N],
  RESP(A?B)[:N], PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, RESPONSE_CODE_DETAILS,
  CONNECTION_TERMINATION_DETAILS, UPSTREAM_TRANSPORT_FAILURE_REASON, BYTES_RECEIVED, BYTES_SENT,
  DURATION, UPSTREAM_HOST, UPSTREAM_CLUSTER, UPSTREAM_CLUSTER_RAW, UPSTREAM_LOCAL_ADDRESS,
  UPSTREAM_REMOTE_ADDRESS, DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS (and their
  _WITHOUT_PORT forms), REQUESTED_SERVER_NAME, ROUTE_NAME, HOSTNAME.
- Text: an unset value prints `-`; a TCP connection reads `"- - -" 0 UH ...` like Istio's.
  JSON: one object per line, keys sorted (as Envoy's Struct output is); a value that is exactly
  one operator keeps its type (numbers stay numbers, unset is null), otherwise it is a string.
- ISTIO_TEXT_FORMAT and ISTIO_JSON_FIELDS are Istio's defaults (MeshConfig accessLogFile with
  no accessLogFormat).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import cast

from pysidecar.common.stream_info import StreamInfo
from pysidecar.model.access_log import AccessLogConfig

Value = str | int | None
Getter = Callable[[StreamInfo], Value]
Formatter = Callable[[StreamInfo], str]

ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

ISTIO_JSON_FIELDS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}

_OPERATOR = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?(?::(\d+))?%")


class FormatError(ValueError):
    pass


# -- values -----------------------------------------------------------------------------------

_last_second = -1
_last_prefix = ""
_last_ms = -1
_last_text = ""


def iso_time(t: float) -> str:
    """Envoy's default START_TIME: `2020-11-25T21:26:18.409Z`. The second and the last
    millisecond's text are cached: under load many lines share them."""
    global _last_second, _last_prefix, _last_ms, _last_text
    ms = round(t * 1e6) // 1000  # whole microseconds first: 0.409 stays .409
    if ms == _last_ms:
        return _last_text
    sec, milli = divmod(ms, 1000)
    if sec != _last_second:
        _last_second, _last_prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    _last_ms, _last_text = ms, f"{_last_prefix}.{milli:03d}Z"
    return _last_text


def _strftime_getter(fmt: str) -> Getter:
    def get(info: StreamInfo) -> Value:
        sec, micros = divmod(round(info.start_time * 1e6), 1_000_000)
        out = fmt.replace("%3f", f"{micros // 1000:03d}").replace("%6f", f"{micros:06d}")
        out = out.replace("%9f", f"{micros * 1000:09d}").replace("%f", f"{micros * 1000:09d}")
        return time.strftime(out, time.gmtime(sec))

    return get


def _without_port(address: str | None) -> str | None:
    if address is None:
        return None
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") else host


# Getters that read one StreamInfo attribute, and its name: compile_text reads it inline.
_FIELDS: dict[Getter, str] = {}


def _field(name: str) -> Getter:
    get = cast(Getter, attrgetter(name))
    _FIELDS[get] = name
    return get


# Headers the StreamInfo keeps in fields of their own.
_REQUEST_FIELDS: dict[str, Getter] = {
    ":method": _field("method"),
    ":path": _field("path"),
    "x-envoy-original-path": _field("original_path"),
    ":authority": _field("authority"),
    "host": _field("authority"),
    "user-agent": _field("user_agent"),
    "x-request-id": _field("request_id"),
    "x-forwarded-for": _field("x_forwarded_for"),
    ":protocol": _field("protocol"),
}
_RESPONSE_FIELDS: dict[str, Getter] = {
    "x-envoy-upstream-service-time": lambda i: (
        None if i.upstream_service_time_ms is None else str(i.upstream_service_time_ms)
    ),
}


def _header_getter(name: str, response: bool) -> Getter:
    known = (_RESPONSE_FIELDS if response else _REQUEST_FIELDS).get(name)
    if known is not None:
        return known

    def get(info: StreamInfo) -> Value:
        headers = info.response_headers if response else info.request_headers
        return None if headers is None else headers.get(name)

    return get


def _headers_getter(arg: str | None, response: bool) -> Getter:
    """REQ(A?B): header A, or B when A is absent."""
    if not arg:
        raise FormatError(f"{'RESP' if response else 'REQ'} needs a header name")
    names = [n.strip().lower() for n in arg.split("?", 1)]
    first = _header_getter(names[0], response)
    if len(names) == 1:
        return first
    second = _header_getter(names[1], response)

    def get(info: StreamInfo) -> Value:
        value = first(info)
        return value if value is not None else second(info)

    return get


_HOSTNAME = socket.gethostname()

_SIMPLE: dict[str, Getter] = {
    "PROTOCOL": _field("protocol"),
    "RESPONSE_CODE": _field("response_code"),
    "RESPONSE_FLAGS": _field("response_flags_text"),
    "RESPONSE_CODE_DETAILS": _field("response_code_details"),
    "CONNECTION_TERMINATION_DETAILS": _field("connection_termination_details"),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _field("upstream_transport_failure_reason"),
    "BYTES_RECEIVED": _field("bytes_received"),
    "BYTES_SENT": _field("bytes_sent"),
    "DURATION": _field("duration_ms"),
    "UPSTREAM_HOST": _field("upstream_host"),
    "UPSTREAM_REMOTE_ADDRESS": _field("upstream_host"),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.upstream_host),
    # Envoy's UPSTREAM_CLUSTER prints the alt_stat_name; the record holds the real name only.
    "UPSTREAM_CLUSTER": _field("upstream_cluster"),
    "UPSTREAM_CLUSTER_RAW": _field("upstream_cluster"),
    "UPSTREAM_LOCAL_ADDRESS": _field("upstream_local_address"),
    "DOWNSTREAM_LOCAL_ADDRESS": _field("downstream_local_address"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.downstream_local_address),
    "DOWNSTREAM_REMOTE_ADDRESS": _field("downstream_remote_address"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda i: _without_port(i.downstream_remote_address),
    "REQUESTED_SERVER_NAME": _field("requested_server_name"),
    "DOWNSTREAM_PEER_URI_SAN": _field("downstream_peer_uri_san"),
    "DOWNSTREAM_LOCAL_URI_SAN": _field("downstream_local_uri_san"),
    "UPSTREAM_PEER_URI_SAN": _field("upstream_peer_uri_san"),
    "ROUTE_NAME": _field("route_name"),
    "HOSTNAME": lambda i: _HOSTNAME,
}


def _truncated(getter: Getter, limit: int) -> Getter:
    def get(info: StreamInfo) -> Value:
        value = getter(info)
        return value[:limit] if isinstance(value, str) else value

    return get


def operator(command: str, arg: str | None = None, limit: int | None = None) -> Getter:
    """The getter of one command operator, e.g. operator("REQ", ":METHOD")."""
    if command == "START_TIME":
        getter: Getter = _strftime_getter(arg) if arg else (lambda i: iso_time(i.start_time))
    elif command in ("REQ", "RESP"):
        getter = _headers_getter(arg, command == "RESP")
    elif command in _SIMPLE and arg is None:
        getter = _SIMPLE[command]
    else:
        raise FormatError(f"unknown access log command operator %{command}%")
    return _truncated(getter, limit) if limit is not None else getter


def parse(fmt: str) -> list[str | Getter]:
    """Literal text and getters, in order."""
    parts: list[str | Getter] = []
    pos = 0
    for m in _OPERATOR.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos : m.start()])
        limit = int(m.group(3)) if m.group(3) else None
        parts.append(operator(m.group(1), m.group(2), limit))
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts


# -- formatters -------------------------------------------------------------------------------


def _text(value: Value) -> str:
    return "-" if value is None else str(value)


def _literal(text: str) -> Callable[[StreamInfo], str]:
    return lambda _info: text


def _as_text(getter: Getter) -> Callable[[StreamInfo], str]:
    return lambda info: _text(getter(info))


def compile_text(fmt: str) -> Formatter:
    """A text format; a line always ends in a newline (added when the format has none).

    A line costs one %-format of a tuple built by one generated function: fields are read as
    attributes and only computed operators are called. A call per literal and per operator
    (as before) cost as much as the rest of a request's accounting under load."""
    if not fmt.endswith("\n"):
        fmt += "\n"
    parts = parse(fmt)
    env: dict[str, object] = {"__builtins__": {}}
    values: list[str] = []
    for p in parts:
        if isinstance(p, str):
            continue
        field = _FIELDS.get(p)
        if field is not None:
            read = f"i.{field}"
        else:
            name = f"g{len(values)}"
            env[name] = p
            read = f"{name}(i)"
        values.append(f'"-" if (v := {read}) is None else v')
    env["template"] = "".join(p.replace("%", "%%") if isinstance(p, str) else "%s" for p in parts)
    source = (
        "def format_line(i):\n    return template % (" + "".join(v + ", " for v in values) + ")\n"
    )
    exec(source, env)  # only names made above: attribute names from _FIELDS, g<n>, template
    return cast(Formatter, env["format_line"])


def _json_value(fmt: str) -> Getter:
    parts = parse(fmt)
    if len(parts) == 1 and not isinstance(parts[0], str):
        return parts[0]  # one operator: keeps its type
    texts = tuple(_literal(p) if isinstance(p, str) else _as_text(p) for p in parts)
    return lambda info: "".join([t(info) for t in texts])


def compile_json(fields: Mapping[str, str]) -> Formatter:
    items = tuple((key, _json_value(fields[key])) for key in sorted(fields))
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def format_line(info: StreamInfo) -> str:
        return dumps({key: get(info) for key, get in items}) + "\n"

    return format_line


def formatter(config: AccessLogConfig) -> Formatter:
    """The compiled line formatter; raises FormatError for a bad format (checked at load)."""
    if config.encoding == "TEXT":
        return compile_text(config.format or ISTIO_TEXT_FORMAT)
    if config.format is None:
        return compile_json(ISTIO_JSON_FIELDS)
    try:
        fields = json.loads(config.format)
    except json.JSONDecodeError as e:
        raise FormatError(f"JSON access log format is not a JSON object: {e}") from e
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
        raise FormatError("JSON access log format must map keys to format strings")
    return compile_json(fields)
