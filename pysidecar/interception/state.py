"""What the kernel holds, as data, and how it compares with what we want.

Promises:
- `parse_save(text)` reads `iptables-save` output (any backend) into ordered chains per table;
  comments and counters are dropped. Pure.
- `owned(tables)` is the part of the kernel state that belongs to us: every ISTIO_* chain with
  its rules, and in built-in chains only the rules that jump into ISTIO_* chains or, when the
  family holds ISTIO_* chains at all, have one of the exact shapes istio-iptables installs
  there (`rules.BUILTIN_SHAPES`: `-i IFACE -j RETURN`, TPROXY marks, ...). It is read from the
  kernel alone, not from the current flags, so `-c eth9` then a run without `-c` (or
  `--cleanup-only` without it) still removes eth9's RETURNs. Foreign rules of any other shape
  are never part of it, so never cleaned up; a foreign rule of exactly our shape cannot be told
  apart (the listing carries no comments, as Istio's doesn't).
- `wanted(rule_set)` has the same shape for a RuleSet, so "already applied" is plain equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pysidecar.interception.rules import (
    BUILTIN_CHAINS,
    OWNED_CHAIN_PREFIX,
    TABLE_ORDER,
    RuleSet,
    has_builtin_shape,
)

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


def owned(tables: Tables) -> dict[str, OwnedTable]:
    """Our part of the kernel state, per table; tables without any of ours are left out."""
    out: dict[str, OwnedTable] = {}
    installed = any(c.startswith(OWNED_CHAIN_PREFIX) for chains in tables.values() for c in chains)
    for table, chains in tables.items():
        own = {c: tuple(r) for c, r in chains.items() if c.startswith(OWNED_CHAIN_PREFIX)}
        builtin = {c: tuple(s for s in r if _jumps_to_owned(s)
                            or (installed and has_builtin_shape(table, c, s)))
                   for c, r in chains.items() if c in BUILTIN_CHAINS}
        builtin = {c: r for c, r in builtin.items() if r}
        t = OwnedTable(own, builtin)
        if not t.empty:
            out[table] = t
    return out


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
