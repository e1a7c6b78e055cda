"""RuleSet (+ what to remove first) -> `iptables-restore --noflush` input.

Promises:
- Pure: text in, text out. One script per address family; feeding it to
  `iptables-restore --noflush` is all-or-nothing per table (one COMMIT per table).
- Removal and installation share one script, so a reconcile never leaves the pod half
  captured: stale jumps are deleted (`-D`), stale ISTIO_* chains flushed and deleted, and wanted
  chains are (re)declared with `:CHAIN - [0:0]`, which iptables-restore --noflush creates or
  flushes; it never answers "chain already exists".
- `Script.describe_line(n)` maps a line number from iptables-restore's error back to the rule
  (or COMMIT) it came from, so a kernel refusal can name the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from pysidecar.interception.rules import TABLE_ORDER, RuleSet
from pysidecar.interception.state import OwnedTable


@dataclass(frozen=True, slots=True)
class Script:
    """iptables-restore input plus, per line, the table it belongs to."""

    lines: tuple[str, ...]
    tables: tuple[str, ...]  # table of each line ("" outside a table block)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n" if self.lines else ""

    @property
    def empty(self) -> bool:
        return not self.lines

    def describe_line(self, number: int) -> str:
        if not 1 <= number <= len(self.lines):
            return f"line {number}"
        line = self.lines[number - 1]
        table = self.tables[number - 1]
        if line == "COMMIT":
            return f"line {number}: COMMIT of table {table} (the kernel refused one of its rules)"
        return f"line {number}: -t {table} {line}"


def render(rule_set: RuleSet | None, remove: dict[str, OwnedTable] | None = None) -> Script:
    """Script removing `remove` (our current state) and then installing `rule_set`."""
    remove = remove or {}
    lines: list[str] = []
    tables: list[str] = []
    wanted_tables = rule_set.tables() if rule_set is not None else ()
    for table in TABLE_ORDER:
        old = remove.get(table)
        if table not in wanted_tables and old is None:
            continue
        body: list[str] = []
        keep: tuple[str, ...] = rule_set.owned_chains(table) if rule_set is not None else ()
        # Declarations first: creates missing chains, flushes existing ones we want again.
        body.extend(f":{chain} - [0:0]" for chain in keep)
        if old is not None:
            for chain, specs in old.builtin.items():
                body.extend(f"-D {chain} {spec}" for spec in specs)
            stale = [c for c in old.chains if c not in keep]
            # Flush all before deleting any: stale chains may jump to each other.
            body.extend(f"-F {chain}" for chain in stale)
            body.extend(f"-X {chain}" for chain in stale)
        if rule_set is not None:
            for rule in rule_set.rules:
                if rule.table != table:
                    continue
                if rule.position is None:
                    body.append(f"-A {rule.chain} {rule.text}")
                else:
                    body.append(f"-I {rule.chain} {rule.position} {rule.text}")
        if not body:
            continue
        block = [f"*{table}", *body, "COMMIT"]
        lines.extend(block)
        tables.extend([table] * len(block))
    return Script(tuple(lines), tuple(tables))


def render_listing(rule_set: RuleSet, table: str = "nat") -> str:
    """What `iptables-save -t TABLE` prints after a fresh apply (no counters, no comments)."""
    out = [f"*{table}"]
    builtin_order = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING") if table == "nat" else (
        ("PREROUTING", "OUTPUT") if table == "raw" else
        ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))
    out.extend(f":{c} ACCEPT [0:0]" for c in builtin_order)
    owned = rule_set.owned_chains(table)
    out.extend(f":{c} - [0:0]" for c in owned)
    for chain in (*builtin_order, *owned):
        out.extend(f"-A {chain} {spec}" for spec in rule_set.final_chain(table, chain))
    out.append("COMMIT")
    return "\n".join(out) + "\n"
