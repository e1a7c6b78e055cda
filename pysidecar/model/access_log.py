"""AccessLogConfig: the access log settings every front end produces (no I/O, no formatting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """Where and how finished streams are logged (Envoy's file/stdout access loggers, Istio's
    accessLogFile). path None means off; format None means Istio's default for the encoding;
    a JSON format is the text of a JSON object of key → format string."""

    path: str | None = None
    encoding: Literal["TEXT", "JSON"] = "TEXT"
    format: str | None = None
