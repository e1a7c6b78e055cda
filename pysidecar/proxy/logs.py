"""Log set-up shared by the main process and the workers: Envoy-like lines on stderr."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "[%(asctime)s][%(process)d][%(levelname)s][%(name)s] %(message)s"


def python_level(name: str) -> int:
    """Envoy's level names (trace, debug, info, warning/warn, error, critical, off)."""
    return {
        "trace": logging.DEBUG,
        "warn": logging.WARNING,
        "off": logging.CRITICAL + 10,
    }.get(name, getattr(logging, name.upper(), logging.INFO))


def setup_logging(level: str) -> None:
    logging.basicConfig(level=python_level(level), format=LOG_FORMAT, stream=sys.stderr, force=True)
