"""The access log: its settings, and a buffered writer each worker owns.

Promises:
- Settings are the model's `AccessLogConfig`, from Istio's MeshConfig (accessLogFile,
  accessLogEncoding, accessLogFormat), from `pysidecar run --access-log PATH
  --access-log-format F` (`from_flags`), or from an Envoy filter's `access_log` list.
  `common.access_format.formatter(config)` checks and compiles the format, so a bad one
  fails at config load.
- `AccessLog` writes whole lines to a file opened with O_APPEND, so several workers can share
  one file (or /dev/stdout) without tearing lines. `/dev/stdout` and `/dev/stderr` are the
  process's own descriptors (dup'ed, as Envoy's stdout/stderr destinations), not reopened: a
  proxy running as 1337 may not open the pipe or file a root-owned runtime gave it. Lines are buffered and written once a second
  (Envoy's file flush interval) or when 64 KiB are waiting, so the data path does no syscall
  per line. `close()` writes what is left.
"""

from __future__ import annotations

import asyncio
import os

from pysidecar.common.access_format import formatter
from pysidecar.common.stream_info import StreamInfo
from pysidecar.model import AccessLogConfig

FLUSH_INTERVAL = 1.0  # Envoy's access log file_flush_interval default
FLUSH_BYTES = 64 * 1024


def from_flags(path: str | None, fmt: str | None) -> AccessLogConfig:
    """`--access-log-format text|json|<format>`: a format starting with `{` is JSON."""
    if fmt is None or fmt.lower() == "text":
        return AccessLogConfig(path, "TEXT")
    if fmt.lower() == "json":
        return AccessLogConfig(path, "JSON")
    return AccessLogConfig(path, "JSON" if fmt.lstrip().startswith("{") else "TEXT", fmt)


# Paths that name the process's own output streams, which every worker inherits.
STD_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}


class AccessLog:
    """One worker's log: format a finished stream, buffer the line, flush in whole lines."""

    def __init__(self, config: AccessLogConfig, loop: asyncio.AbstractEventLoop) -> None:
        assert config.path is not None
        self.format = formatter(config)
        self.loop = loop
        std = STD_STREAMS.get(config.path)
        if std is not None:
            self.fd = os.dup(std)  # not inheritable, like O_CLOEXEC
        else:
            self.fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def log(self, info: StreamInfo) -> None:
        line = self.format(info)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = "".join(self._lines).encode()
        self._lines.clear()
        self._size = 0
        # One write per flush; the loop only continues after a short write (a full pipe), whose
        # rest is copied. No memoryview: mypyc takes a memoryview for bytes (mypy promotes it)
        # and gets its truth and slices wrong.
        sent = os.write(self.fd, data)
        while sent < len(data):
            sent += os.write(self.fd, data[sent:])

    def close(self) -> None:
        self.flush()
        os.close(self.fd)
