"""`pysidecar init`: istio-iptables' command line on top of the interception package.

Promises:
- Accepts istio-iptables' short and long flags and env vars (see options.py), flag beats env.
- Exit status: 0 done (or nothing to do), 1 the kernel or a tool refused, 2 bad flag values
  (message names the flag, nothing applied), 126 `--run-validation` failed (Istio's
  ValidationErrorCode).
- `--dry-run` prints the iptables-restore input per family and changes nothing.
- `--cleanup-only` removes every ISTIO_* chain and every jump into one (nat, mangle, raw), plus
  the other built-in-chain rules istio-iptables installs (recognised by shape, whatever flags
  installed them: see state.owned), and nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pysidecar.interception import addresses, apply, backend, routes, validation
from pysidecar.interception.options import (
    BOOL_FLAGS,
    STRING_FLAGS,
    InterceptionOptions,
    OptionsError,
    options_from_sources,
)
from pysidecar.interception.render import render
from pysidecar.interception.rules import Family, build_rule_set

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VALIDATION = 126  # constants.ValidationErrorCode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for spec in STRING_FLAGS:
        names = [n for n in (spec.short, spec.long) if n]
        env = f" (env ${spec.env})" if spec.env else ""
        default = f" [default {spec.default!r}]" if spec.default else ""
        parser.add_argument(*names, dest=spec.dest, default=None, metavar="VALUE",
                            help=f"{spec.help}{env}{default}")
    for dest, short, long, envs, help_text in BOOL_FLAGS:
        names = [n for n in (short, long) if n]
        parser.add_argument(*names, dest=dest, action="store_const", const=True, default=None,
                            help=f"{help_text} (env ${envs[0]})")


def _log(message: str) -> None:
    print(f"pysidecar init: {message}", file=sys.stderr)


def _families(opts: InterceptionOptions) -> tuple[Family, ...]:
    if opts.dual_stack or addresses.has_global_ipv6():
        return (Family.V4, Family.V6)
    return (Family.V4,)


def main(args: argparse.Namespace) -> int:
    flags = {name: getattr(args, name, None)
             for name in [s.dest for s in STRING_FLAGS] + [b[0] for b in BOOL_FLAGS]}
    try:
        opts = options_from_sources(flags, os.environ)
    except OptionsError as exc:
        _log(f"invalid value for {exc}")
        return EXIT_USAGE
    if opts.redirect_dns and not opts.capture_all_dns:
        opts = dataclasses.replace(opts, dns_servers=addresses.resolv_conf_servers())
    families = _families(opts)

    if opts.dry_run:
        return _dry_run(opts, families)
    try:
        chosen = backend.detect(opts.force_iptables_binary)
        if opts.cleanup_only:
            _cleanup(opts, chosen)
        else:
            _apply(opts, chosen, families)
    except (apply.ApplyError, backend.BackendError, routes.RouteError, RuntimeError) as exc:
        _log(f"failed: {exc}")
        return EXIT_FAILED

    if opts.run_validation:
        result = validation.run_validation(opts)
        if not result.passed:
            _log(f"iptables validation failed; workload is not ready for Istio: {result.detail}")
            return EXIT_VALIDATION
        _log(f"validation passed: {result.detail}")
    return EXIT_OK


def _dry_run(opts: InterceptionOptions, families: tuple[Family, ...]) -> int:
    for family in families:
        if opts.cleanup_only:
            print(f"# {family.value}: --cleanup-only removes every ISTIO_* chain and jump found")
            continue
        binary = "iptables-restore" if family is Family.V4 else "ip6tables-restore"
        print(f"# {family.value}: {binary} --noflush")
        sys.stdout.write(render(build_rule_set(opts, family)).text)
    return EXIT_OK


def _apply(opts: InterceptionOptions, chosen: backend.Backend, families: tuple[Family, ...]) -> None:
    if Family.V6 in families:
        addresses.ensure_ipv6_passthrough_address()
    for family in families:
        rule_set = build_rule_set(opts, family)
        action = apply.apply_family(chosen, family, rule_set)
        _log(f"{family.value} ({chosen.name}): {action.value}")
    if Family.V6 not in families:
        # A previous dual-stack run may have left ip6tables rules: they are ours, remove them.
        try:
            action = apply.cleanup_family(chosen, Family.V6)
        except backend.BackendError:
            action = apply.Action.NOTHING
        if action is apply.Action.CLEAN:
            _log(f"ipv6 ({chosen.name}): removed stale rules (no IPv6 in this namespace)")
    if opts.mode == "TPROXY":
        routes.ensure_tproxy_routes(opts.tproxy_mark, opts.tproxy_route_table, families)


def _cleanup(opts: InterceptionOptions, chosen: backend.Backend) -> None:
    for family in (Family.V4, Family.V6):
        try:
            action = apply.cleanup_family(chosen, family)
        except backend.BackendError as exc:
            if family is Family.V6:
                _log(f"ipv6 ({chosen.name}): skipped ({exc})")
                continue
            raise
        _log(f"{family.value} ({chosen.name}): {action.value}")
    families = (Family.V4, Family.V6)
    routes.remove_tproxy_routes(opts.tproxy_mark, opts.tproxy_route_table, families)

