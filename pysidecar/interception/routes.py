"""Policy routing for TPROXY mode: marked packets are delivered to the local stack.

Promises:
- `ensure_tproxy_routes(mark, table, families)` makes `ip rule fwmark MARK lookup TABLE` and
  `ip route local default dev lo table TABLE` exist (Istio's ConfigureRoutes); running it twice
  changes nothing.
- `remove_tproxy_routes(mark, table, families)` removes exactly those two entries if present.
- Uses the `ip` command (iproute2), which every image that has iptables also has; each call
  names what it tried in the error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from pysidecar.interception.rules import Family


class RouteError(RuntimeError):
    pass


def _ip(family: Family, *args: str, check: bool = True) -> str:
    argv = ["ip", "-4" if family is Family.V4 else "-6", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RouteError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def _has_rule(family: Family, mark: int, table: int) -> bool:
    out = _ip(family, "rule", "show", check=False)
    want_mark = {f"fwmark {hex(mark)}", f"fwmark {mark}"}
    return any(any(m in line for m in want_mark) and f"lookup {table}" in line
               for line in out.splitlines())


def ensure_tproxy_routes(mark: int, table: int, families: Iterable[Family]) -> None:
    for family in families:
        if not _has_rule(family, mark, table):
            _ip(family, "rule", "add", "fwmark", str(mark), "lookup", str(table))
        # `replace` is idempotent where `add` would answer "File exists".
        _ip(family, "route", "replace", "local", "default", "dev", "lo", "table", str(table))


def remove_tproxy_routes(mark: int, table: int, families: Iterable[Family]) -> None:
    for family in families:
        while _has_rule(family, mark, table):
            _ip(family, "rule", "del", "fwmark", str(mark), "lookup", str(table))
        # Only our route: the table number is configurable and may be shared.
        _ip(family, "route", "del", "local", "default", "dev", "lo", "table", str(table),
            check=False)
