"""Runs the demo: builds the world, runs each step, shows what the proxies recorded, cleans up.

Promises:
- Each step's header and explanation are printed before it runs, its transcript as it goes,
  then the counters it moved (admin /stats), the Istio metrics it moved (:15090) and the
  access-log lines it produced, then `ok` or `FAILED: expected …`.
- A step also fails when its proxies wrote fewer access-log lines than it promised.
- Exit status: 0 only when every step met its expectation; 1 otherwise (the first failure
  stops the demo unless --keep-going); 2 not root; 130 interrupted (Ctrl-C or SIGTERM).
- Everything is removed whatever happens: the lab (namespaces, /etc/netns, processes, logs)
  and the config directory.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from types import FrameType

from pysidecar.demo import world as world_mod
from pysidecar.demo.steps import STEPS, Step
from pysidecar.demo.world import Unexpected, World
from pysidecar.lab import Lab

INDENT = "   "
MAX_LOG_LINES = 4  # per proxy and step; the rest is counted, not printed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-going", action="store_true", help="run every step even after a failure"
    )


def _say(text: str = "") -> None:
    print(text, flush=True)


def _out(text: str) -> None:
    _say(INDENT + text)


class _Snapshot:
    """Counters and Istio metrics of the step's proxies before it ran."""

    def __init__(self, w: World, step: Step) -> None:
        self.stats = {p: w.stats(w.lab.pod(p)) for p in step.proxies}
        self.metrics = {p: w.istio_metrics(w.lab.pod(p)) for p in step.proxies}


def _observe(w: World, step: Step, before: _Snapshot) -> list[str]:
    """Print what the step's proxies recorded; return the access-log shortfalls."""
    missing: list[str] = []
    patterns = [re.compile(p) for p in step.counters]
    for name in step.proxies:
        pod = w.lab.pod(name)
        log = w.logs[name]
        after = w.stats(pod)
        old = before.stats[name]
        moved = [
            f"{k}: {old.get(k, 0)} -> {v}"
            for k, v in sorted(after.items())
            if v != old.get(k, 0) and any(p.search(k) for p in patterns)
        ]
        if moved:
            _out(f"[{log.label}] counters (admin /stats):")
            for line in moved:
                _out(f"  {line}")
        metrics = w.istio_metrics(pod)
        grown = [
            f"{k} +{v - before.metrics[name].get(k, 0):g}"
            for k, v in sorted(metrics.items())
            if v != before.metrics[name].get(k, 0)
        ]
        if grown:
            _out(f"[{log.label}] Istio metrics (:15090/stats/prometheus, labels shortened):")
            for line in grown:
                _out(f"  {line}")
        wanted = log.wanted
        lines = log.take()
        log.wanted = 0
        if lines:
            _out(f"[{log.label}] access log, {len(lines)} new line(s):")
            for line in lines[:MAX_LOG_LINES]:
                _out(f"  {line}")
            if len(lines) > MAX_LOG_LINES:
                _out(f"  ... and {len(lines) - MAX_LOG_LINES} more")
        if len(lines) < wanted:
            missing.append(f"{wanted} access-log line(s) from the {log.label}, got {len(lines)}")
    return missing


def _run_step(w: World, i: int, step: Step) -> bool:
    _say(f"\n== {i}/{len(STEPS)} {step.title}")
    for line in _wrap(step.explain):
        _out(line)
    _say()
    started = time.monotonic()
    before = _Snapshot(w, step)
    for name, n in step.log_lines:
        w.logs[name].wanted = n
    failure: str | None = None
    try:
        step.run(w, _out)
    except Unexpected as e:
        failure = str(e)
    try:
        missing = _observe(w, step, before)
    except Unexpected as e:
        missing = [str(e)]
    if failure is None and missing:
        failure = "; ".join(missing)
    took = time.monotonic() - started
    if failure is not None:
        _out(f"FAILED ({took:.1f}s): expected {failure}")
        return False
    _out(f"ok ({took:.1f}s)")
    return True


def _wrap(text: str, width: int = 96) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def _explore_hint() -> None:
    _say(
        "\nTo explore by hand (the same kind of pods, kept until you remove them):\n"
        "   pysidecar lab up                                   # client behind the sidecar, httpbin.org, edition.cnn.com\n"
        "   pysidecar lab shell client -- curl -s http://httpbin.org/headers\n"
        "   pysidecar lab shell client                         # a shell in the client pod\n"
        "   pysidecar lab down                                 # remove it all"
    )


def main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("pysidecar demo: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGTERM takes the Ctrl-C path, so the `finally` below removes everything either way.
    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    passed = failed = 0
    lab: Lab | None = None
    world: World | None = None
    try:
        lab = Lab()
        _say(f"building the lab ({lab.prefix}) ...")
        world = world_mod.build(lab, _out)
        _out(f"ready in {time.monotonic() - started:.1f}s")
        for i, step in enumerate(STEPS, 1):
            if _run_step(world, i, step):
                passed += 1
            else:
                failed += 1
                if not args.keep_going:
                    break
    except KeyboardInterrupt:
        _say("\ninterrupted: cleaning up")
        return 130
    except Exception as e:
        logs = lab.logs() if lab is not None else ""
        print(f"pysidecar demo: {type(e).__name__}: {e}\n{logs}", file=sys.stderr)
        return 1
    finally:
        # Ignore a second Ctrl-C / SIGTERM while removing things: half a cleanup is the worst.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if world is not None:
            world.close()
        if lab is not None:
            lab.close()
    skipped = len(STEPS) - passed - failed
    _say(
        f"\n{passed}/{len(STEPS)} steps as expected"
        + (f", {failed} failed" if failed else "")
        + (f", {skipped} not run" if skipped else "")
        + f", in {time.monotonic() - started:.1f}s; lab {lab.prefix if lab else ''} removed"
    )
    _explore_hint()
    return 0 if failed == 0 and skipped == 0 else 1
