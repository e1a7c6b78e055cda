"""What the kernel holds, as data, and how it compares with what we want.

Promises:
- `parse_save(text)` reads `iptables-save` output (any backend) into ordered chains per table;
  comments and counters are dropped. Pure.
- `owned(tables, extra)` is the part of the kernel state that belongs to us: every ISTIO_*
  chain with its rules, and in built-in chains only the rules that jump into ISTIO_* chains or
  that equal one of `extra` (the built-in-chain rules the current flags would install, such as
  `-c` interface RETURNs). Foreign rules are never part of it, so never cleaned up.
- `wanted(rule_set)` has the same shape for a RuleSet, so "already applied" is plain equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pysidecar.interception.rules import BUILTIN_CHAINS, OWNED_CHAIN_PREFIX, TABLE_ORDER, RuleSet

# table -> chain -> rule specs in kernel order (without the leading "-A CHAIN").
Tables = dict[str, dict[str, list[str]]]


@dataclass(frozen=True, slots=True)
class OwnedTable:
    """Our chains and our rules in built-in chains, for one table."""

    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    builtin: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.chains and not any(self.builtin.values())


def parse_save(text: str) -> Tables:
    tables: Tables = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), {})
        elif line == "COMMIT":
            current = None
        elif current is None:
            continue
        elif line.startswith(":"):
            current.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            current.setdefault(chain, []).append(rest[0] if rest else "")
    return tables


def _jumps_to_owned(spec: str) -> bool:
    words = spec.split()
    return any(w in ("-j", "-g") and i + 1 < len(words) and words[i + 1].startswith(OWNED_CHAIN_PREFIX)
               for i, w in enumerate(words))


def owned(tables: Tables, extra: dict[str, frozenset[str]] | None = None) -> dict[str, OwnedTable]:
    """Our part of the kernel state, per table; tables without any of ours are left out."""
    out: dict[str, OwnedTable] = {}
    for table, chains in tables.items():
        mine = (extra or {}).get(table, frozenset())
        own = {c: tuple(r) for c, r in chains.items() if c.startswith(OWNED_CHAIN_PREFIX)}
        builtin = {c: tuple(s for s in r if _jumps_to_owned(s) or s in mine)
                   for c, r in chains.items() if c in BUILTIN_CHAINS}
        builtin = {c: r for c, r in builtin.items() if r}
        t = OwnedTable(own, builtin)
        if not t.empty:
            out[table] = t
    return out


def builtin_specs(rule_set: RuleSet) -> dict[str, frozenset[str]]:
    """Rule texts we would put into built-in chains, per table (used to recognise ours)."""
    out: dict[str, set[str]] = {}
    for r in rule_set.rules:
        if r.chain in BUILTIN_CHAINS:
            out.setdefault(r.table, set()).add(r.text)
    return {t: frozenset(s) for t, s in out.items()}


def wanted(rule_set: RuleSet) -> dict[str, OwnedTable]:
    out: dict[str, OwnedTable] = {}
    for table in TABLE_ORDER:
        chains = {c: rule_set.final_chain(table, c) for c in rule_set.owned_chains(table)}
        builtin = {c: rule_set.final_chain(table, c)
                   for c in rule_set.chains_with_rules(table) if c in BUILTIN_CHAINS}
        t = OwnedTable(chains, builtin)
        if not t.empty:
            out[table] = t
    return out


def in_sync(current: dict[str, OwnedTable], want: dict[str, OwnedTable]) -> bool:
    return current == want
