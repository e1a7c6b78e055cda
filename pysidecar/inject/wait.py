"""`pysidecar wait`: block until the sidecar is ready; the postStart hook of an injected proxy.

With holdApplicationUntilProxyStarts the proxy is the pod's first container and kubelet starts
the next container only when this hook returns, so the application never runs before the proxy
is ready (Istio's `pilot-agent wait`).

Promises:
- Polls `--url` (default http://127.0.0.1:15021/healthz/ready) every `--period-ms` with a
  `--request-timeout-ms` per request, until it answers 200: exit 0.
- Not ready within `--timeout-seconds` (default 60): one line on stderr, exit 1 (kubelet then
  kills the container and restarts it, as with Istio).
- Bad arguments: exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

READY_URL = "http://127.0.0.1:15021/healthz/ready"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=READY_URL, help=f"readiness URL (default {READY_URL})")
    parser.add_argument("--timeout-seconds", type=float, default=60.0,
                        help="give up after this long (default 60)")
    parser.add_argument("--period-ms", type=int, default=500, help="time between polls (default 500)")
    parser.add_argument("--request-timeout-ms", type=int, default=500,
                        help="timeout of one poll (default 500)")


def probe(url: str, timeout: float) -> int | None:
    """The HTTP status of one GET, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def wait_ready(url: str, timeout: float, period: float, request_timeout: float,
               get: Callable[[str, float], int | None] = probe,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> tuple[bool, int | None]:  # fmt: skip
    """Poll until 200 or `timeout`; returns (ready, last status seen)."""
    deadline = clock() + timeout
    last: int | None = None
    while True:
        last = get(url, request_timeout)
        if last == 200:
            return True, last
        if clock() + period > deadline:
            return False, last
        sleep(period)


def main(args: argparse.Namespace) -> int:
    if args.timeout_seconds <= 0 or args.period_ms <= 0 or args.request_timeout_ms <= 0:
        print("pysidecar wait: timeouts and period must be positive", file=sys.stderr)
        return 2
    ready, last = wait_ready(args.url, args.timeout_seconds, args.period_ms / 1000,
                             args.request_timeout_ms / 1000)  # fmt: skip
    if ready:
        return 0
    seen = f"last status {last}" if last is not None else "no answer"
    print(f"pysidecar wait: {args.url} not ready after {args.timeout_seconds:g}s ({seen})",
          file=sys.stderr)  # fmt: skip
    return 1
