"""Envoy's `access_log` lists (on tcp_proxy and the HTTP connection manager) → AccessLogConfig.

Promises: the file and stdout/stderr access loggers with `path`, `log_format`
(`text_format_source.inline_string`, `text_format`, `json_format`) or the older `format`
string; anything else (`filter`, other logger types, other format sources) is a ConfigError
naming the YAML path. Formats are compiled here, so a bad command operator fails at load.
"""

from __future__ import annotations

import json

from pysidecar.common.access_format import FormatError, formatter
from pysidecar.config.node import Node
from pysidecar.model import AccessLogConfig

FILE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
_STREAM_PATHS = {STDOUT: "/dev/stdout", STDERR: "/dev/stderr"}


def _log_format(node: Node) -> tuple[str, str | None]:
    f = node.fields("text_format_source", "text_format", "json_format", "omit_empty_values", "content_type")
    if (src := f.get("text_format_source")) is not None:
        return "TEXT", src.fields("inline_string").require("inline_string").string()
    if (text := f.get("text_format")) is not None:
        return "TEXT", text.string()
    if (js := f.get("json_format")) is not None:
        if not isinstance(js.value, dict):
            js.fail("expected a mapping of key to format string")
        return "JSON", json.dumps({str(k): js.child(str(k), v).string() for k, v in js.value.items()})
    return "TEXT", None


def access_log(node: Node) -> AccessLogConfig:
    f = node.fields("name", "typed_config", "filter")
    if (flt := f.get("filter")) is not None:
        flt.fail("access log filters are not supported (every stream is logged)")
    tc = f.require("typed_config")
    kind = tc.type_url()
    if kind == FILE:
        tf = tc.fields("@type", "path", "log_format", "format")
        path = tf.require("path").nonempty()
    elif kind in _STREAM_PATHS:
        tf = tc.fields("@type", "log_format")
        path = _STREAM_PATHS[kind]
    else:
        tc.fail(f"unsupported access logger {kind!r}; supported: file, stdout, stderr")
    encoding, fmt = "TEXT", None
    if (lf := tf.get("log_format")) is not None:
        encoding, fmt = _log_format(lf)
    elif (old := tf.get("format")) is not None:
        fmt = old.string()
    config = AccessLogConfig(path, "JSON" if encoding == "JSON" else "TEXT", fmt)
    try:
        formatter(config)
    except FormatError as e:
        (tf.get("log_format") or tf.get("format") or tc).fail(str(e))
    return config


def access_logs(node: Node | None) -> tuple[AccessLogConfig, ...]:
    return tuple(access_log(n) for n in node.items()) if node is not None else ()
