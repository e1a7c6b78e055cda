"""Bring the kernel to the wanted rule set: plan (pure) then one iptables-restore per family.

Promises:
- `plan_apply(rule_set, save_text)` / `plan_cleanup(save_text)` are pure and decide:
  nothing of ours -> install; ours equal to wanted -> nothing to do; ours differ -> one script
  that removes ours and installs the wanted set (Istio's --reconcile, but atomic).
- `apply_family()` reads the kernel with `X-save`, plans, and feeds the script to
  `X-restore --noflush`; a refusal raises `ApplyError` naming the rule and the kernel's words.
  Nothing that is not ours is deleted: see `state.owned`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from pysidecar.interception.backend import Backend, BackendError
from pysidecar.interception.render import Script, render
from pysidecar.interception.rules import Family, RuleSet
from pysidecar.interception.state import owned, parse_save, wanted

_LINE_RE = re.compile(r"line:? (\d+)")


class Action(enum.Enum):
    INSTALL = "installed"
    UNCHANGED = "unchanged (already in place)"
    RECONCILE = "reconciled (replaced our previous rules)"
    CLEAN = "cleaned up"
    NOTHING = "nothing of ours to clean up"


class ApplyError(RuntimeError):
    """The kernel (via iptables-restore) refused our script."""


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    script: Script


def plan_apply(rule_set: RuleSet, save_text: str) -> Plan:
    want = wanted(rule_set)
    current = owned(parse_save(save_text))
    if current == want:
        return Plan(Action.UNCHANGED, render(None))
    if not current:
        return Plan(Action.INSTALL, render(rule_set))
    return Plan(Action.RECONCILE, render(rule_set, remove=current))


def plan_cleanup(save_text: str) -> Plan:
    current = owned(parse_save(save_text))
    if not current:
        return Plan(Action.NOTHING, render(None))
    return Plan(Action.CLEAN, render(None, remove=current))


def explain_failure(script: Script, stderr: str) -> str:
    """Turn iptables-restore's complaint into "which rule, and what the kernel said"."""
    words = " ".join(line.strip() for line in stderr.splitlines()
                     if line.strip() and not line.startswith("Try `") and not line.startswith("#"))
    match = _LINE_RE.search(stderr)
    where = script.describe_line(int(match.group(1))) if match else "unknown line"
    return f"rule refused at {where}: {words}"


def execute(backend: Backend, family: Family, plan: Plan) -> None:
    if plan.script.empty:
        return
    try:
        backend.restore(family, plan.script.text)
    except BackendError as exc:
        raise ApplyError(f"{backend.binary(family, '-restore')}: "
                         f"{explain_failure(plan.script, str(exc))}") from exc


def apply_family(backend: Backend, family: Family, rule_set: RuleSet) -> Action:
    plan = plan_apply(rule_set, backend.save(family))
    execute(backend, family, plan)
    return plan.action


def cleanup_family(backend: Backend, family: Family) -> Action:
    plan = plan_cleanup(backend.save(family))
    execute(backend, family, plan)
    return plan.action
