"""`pysidecar init` end to end: real iptables (legacy and nft) in throwaway network namespaces.

Each test creates its own namespace `psc-init-<pid>-<n>` and deletes it in the fixture's
teardown, whatever happens. Traffic only ever goes over the namespace's loopback.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysidecar.interception.options import options_from_sources
from pysidecar.interception.render import render_listing
from pysidecar.interception.rules import Family, build_rule_set
from tests.unit.test_interception_golden import REFERENCE_LISTING

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and iptables"),
]

REPO = Path(__file__).resolve().parents[2]
INJECTOR_ARGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                 "-x", "", "-b", "*", "-d", "15090,15021,15020"]

# interception.md: the nat table the injector's default arguments produce (one copy, in the
# generator's golden tests).

_counter = itertools.count()
# Env vars that would change what init does; the tests set what they mean explicitly.
_SCRUB = {"INBOUND_CAPTURE_PORT", "INBOUND_TUNNEL_PORT", "PROXY_UID", "PROXY_GID", "DRY_RUN",
          "REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE", "DUAL_STACK", "ISTIO_DUAL_STACK",
          "ISTIO_AGENT_DUAL_STACK", "FORCE_IPTABLES_BINARY", "CLEANUP_ONLY", "RUN_VALIDATION"}


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=stdin)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"psc-init-{os.getpid()}-{next(_counter)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)
        etc = Path("/etc/netns") / name
        if etc.exists():
            for child in etc.iterdir():
                child.unlink()
            etc.rmdir()


def init(ns: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("ISTIO_")}
    full_env.update(env or {})
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "pysidecar", "init", *args],
                          capture_output=True, text=True, cwd=REPO, env=full_env, timeout=120,
                          check=False)


def save(ns: str, backend: str = "nft", table: str | None = "nat", v6: bool = False) -> str:
    tool = f"{'ip6tables' if v6 else 'iptables'}-{backend}-save"
    argv = ["ip", "netns", "exec", ns, tool] + (["-t", table] if table else [])
    out = sh(*argv).stdout
    return "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))


def ipt(ns: str, backend: str, *args: str) -> None:
    sh("ip", "netns", "exec", ns, f"iptables-{backend}", *args)


def expected_listing(*flags: tuple[str, str], table: str = "nat") -> str:
    o = options_from_sources(dict(flags), {})
    return render_listing(build_rule_set(o, Family.V4), table)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_injector_defaults_produce_reference_table(netns: str, backend: str) -> None:
    result = init(netns, *INJECTOR_ARGS, "--force-iptables-binary", backend)
    assert result.returncode == 0, result.stderr
    assert save(netns, backend) == REFERENCE_LISTING


def test_autodetect_uses_nft_in_a_fresh_namespace(netns: str) -> None:
    result = init(netns, *INJECTOR_ARGS)
    assert result.returncode == 0, result.stderr
    assert "(nft)" in result.stderr
    assert save(netns, "nft") == REFERENCE_LISTING


def test_autodetect_prefers_legacy_when_it_holds_rules(netns: str) -> None:
    ipt(netns, "legacy", "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP")
    result = init(netns, *INJECTOR_ARGS)
    assert result.returncode == 0, result.stderr
    assert "(legacy)" in result.stderr
    assert save(netns, "legacy") == REFERENCE_LISTING


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_second_run_is_a_no_op(netns: str, backend: str) -> None:
    first = init(netns, *INJECTOR_ARGS, "--force-iptables-binary", backend)
    assert first.returncode == 0, first.stderr
    before = save(netns, backend)
    second = init(netns, *INJECTOR_ARGS, "--force-iptables-binary", backend)
    assert second.returncode == 0, second.stderr
    assert "unchanged" in second.stderr
    assert "already exists" not in second.stderr
    assert save(netns, backend) == before == REFERENCE_LISTING


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_run_with_other_flags_leaves_only_the_new_rules(netns: str, backend: str) -> None:
    assert init(netns, *INJECTOR_ARGS, "--force-iptables-binary", backend).returncode == 0
    other = ["-i", "10.0.0.0/8", "-x", "10.96.0.0/12", "-b", "8080,9090", "-q", "3306",
             "-o", "25", "-u", "1337,1338", "-g", "2000"]
    result = init(netns, *other, "--force-iptables-binary", backend)
    assert result.returncode == 0, result.stderr
    assert "reconciled" in result.stderr
    assert save(netns, backend) == expected_listing(
        ("service_cidr", "10.0.0.0/8"), ("service_exclude_cidr", "10.96.0.0/12"),
        ("inbound_ports", "8080,9090"), ("outbound_ports", "3306"),
        ("local_outbound_ports_exclude", "25"), ("proxy_uid", "1337,1338"), ("proxy_gid", "2000"))


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_cleanup_only_removes_ours_and_nothing_else(netns: str, backend: str) -> None:
    ipt(netns, backend, "-t", "nat", "-N", "FOREIGN")
    ipt(netns, backend, "-t", "nat", "-A", "FOREIGN", "-j", "RETURN")
    ipt(netns, backend, "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "FOREIGN")
    ipt(netns, backend, "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1/32", "-j", "RETURN")
    foreign_before = save(netns, backend)
    assert init(netns, *INJECTOR_ARGS, "-c", "eth9", "--force-iptables-binary", backend).returncode == 0
    assert "ISTIO_" in save(netns, backend)
    # Without the original -c: our eth9 RETURNs are recognised from the kernel alone.
    result = init(netns, "--cleanup-only", "--force-iptables-binary", backend)
    assert result.returncode == 0, result.stderr
    after = save(netns, backend, table=None)
    assert "ISTIO_" not in after and "eth9" not in after
    assert save(netns, backend) == foreign_before
    # And again: nothing left to clean is still success.
    again = init(netns, "--cleanup-only", "--force-iptables-binary", backend)
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("flag", ["-c", "-k"])
def test_rerun_without_interface_flag_removes_its_rules(netns: str, backend: str, flag: str) -> None:
    # A foreign rule in the same built-in chains, installed before and after us, survives.
    ipt(netns, backend, "-t", "nat", "-A", "PREROUTING", "-i", "eth0", "-p", "udp", "-j", "RETURN")
    first = init(netns, *INJECTOR_ARGS, flag, "eth9", "--force-iptables-binary", backend)
    assert first.returncode == 0, first.stderr
    assert "eth9" in save(netns, backend)
    ipt(netns, backend, "-t", "nat", "-A", "OUTPUT", "-o", "eth0", "-p", "tcp", "-j", "RETURN")
    second = init(netns, *INJECTOR_ARGS, "--force-iptables-binary", backend)
    assert second.returncode == 0, second.stderr
    assert "reconciled" in second.stderr
    listing = save(netns, backend)
    assert "eth9" not in listing
    assert "-A PREROUTING -i eth0 -p udp -j RETURN" in listing
    assert "-A OUTPUT -o eth0 -p tcp -j RETURN" in listing
    ours = "".join(line + "\n" for line in listing.splitlines() if "eth0" not in line)
    assert ours == REFERENCE_LISTING


def test_dry_run_changes_nothing(netns: str) -> None:
    before_nat = save(netns, "nft")
    result = init(netns, *INJECTOR_ARGS, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "*nat" in result.stdout and "-A OUTPUT -j ISTIO_OUTPUT" in result.stdout
    assert save(netns, "nft") == before_nat
    assert "ISTIO_" not in save(netns, "legacy", table=None)
    # The printed script is valid iptables-restore input as is.
    v4 = result.stdout.split("# ipv6")[0]
    sh("ip", "netns", "exec", netns, "iptables-nft-restore", "--noflush", "--test", stdin=v4)


@pytest.mark.parametrize(("args", "flag"), [
    (["-p", "99999"], "-p/--envoy-port"),
    (["-i", "10.0.0.0/33"], "-i/--istio-service-cidr"),
    (["-x", "*"], "-x/--istio-service-exclude-cidr"),
    (["-m", "BOGUS"], "-m/--istio-inbound-interception-mode"),
])
def test_bad_values_are_refused_and_nothing_changes(netns: str, args: list[str], flag: str) -> None:
    assert init(netns, *INJECTOR_ARGS).returncode == 0
    before = save(netns, "nft")
    result = init(netns, *INJECTOR_ARGS, *args)
    assert result.returncode == 2
    assert flag in result.stderr
    assert save(netns, "nft") == before


def test_bad_value_in_fresh_namespace_installs_nothing(netns: str) -> None:
    result = init(netns, *INJECTOR_ARGS, "-z", "0")
    assert result.returncode == 2 and "-z/--inbound-capture-port" in result.stderr
    assert "ISTIO_" not in save(netns, "nft", table=None)


def test_env_vars_are_used_and_flags_win(netns: str) -> None:
    env = {"ISTIO_INBOUND_PORTS": "*", "ISTIO_LOCAL_EXCLUDE_PORTS": "15090,15021,15020",
           "ISTIO_SERVICE_CIDR": "10.0.0.0/8"}
    result = init(netns, "-i", "*", env=env)
    assert result.returncode == 0, result.stderr
    assert save(netns, "nft") == REFERENCE_LISTING


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_validation_passes_with_rules(netns: str, backend: str) -> None:
    result = init(netns, *INJECTOR_ARGS, "--force-iptables-binary", backend, "--run-validation")
    assert result.returncode == 0, result.stderr
    assert "validation passed" in result.stderr


def test_validation_exits_126_without_rules(netns: str) -> None:
    # --cleanup-only leaves no rule at all; the probe to 127.0.0.6:15002 is then refused.
    result = init(netns, "--cleanup-only", "--run-validation")
    assert result.returncode == 126, result.stderr
    assert "validation failed" in result.stderr
    assert "127.0.0.6:15002" in result.stderr


def test_validation_after_cleanup_of_installed_rules_exits_126(netns: str) -> None:
    assert init(netns, *INJECTOR_ARGS, "--run-validation").returncode == 0
    result = init(netns, "--cleanup-only", "--run-validation")
    assert result.returncode == 126, result.stderr


def test_tproxy_mode_installs_mangle_and_policy_routing(netns: str) -> None:
    args = ["-m", "TPROXY", "-b", "*", "-d", "15090", "-i", "*", "-c", "eth9"]
    result = init(netns, *args)
    assert result.returncode == 0, result.stderr
    flags = (("inbound_interception_mode", "TPROXY"), ("inbound_ports", "*"),
             ("local_exclude_ports", "15090"), ("service_cidr", "*"), ("exclude_interfaces", "eth9"))
    assert save(netns, "nft", "mangle") == expected_listing(*flags, table="mangle")
    assert save(netns, "nft", "nat") == expected_listing(*flags, table="nat")
    rules = sh("ip", "netns", "exec", netns, "ip", "rule").stdout
    assert "fwmark 0x539 lookup 133" in rules
    assert "local default dev lo" in sh("ip", "netns", "exec", netns, "ip", "route", "show",
                                        "table", "133").stdout
    again = init(netns, *args)
    assert again.returncode == 0 and "unchanged" in again.stderr
    clean = init(netns, "--cleanup-only")
    assert clean.returncode == 0, clean.stderr
    assert "ISTIO_" not in save(netns, "nft", table=None)
    assert "eth9" not in save(netns, "nft", table=None)
    assert "0x539" not in save(netns, "nft", table=None)
    assert "lookup 133" not in sh("ip", "netns", "exec", netns, "ip", "rule").stdout


def test_ipv6_rules_only_with_a_global_ipv6_address(netns: str) -> None:
    assert init(netns, *INJECTOR_ARGS).returncode == 0
    assert "ISTIO_" not in save(netns, "nft", v6=True, table=None)
    sh("ip", "netns", "exec", netns, "ip", "link", "add", "psc0", "type", "veth",
       "peer", "name", "psc1")
    sh("ip", "netns", "exec", netns, "ip", "link", "set", "psc0", "up")
    sh("ip", "netns", "exec", netns, "ip", "-6", "addr", "add", "2001:db8::10/64", "dev", "psc0",
       "nodad")
    result = init(netns, *INJECTOR_ARGS)
    assert result.returncode == 0, result.stderr
    v6 = save(netns, "nft", v6=True)
    assert "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN" in v6
    assert "-A ISTIO_OUTPUT -d ::1/128 -j RETURN" in v6
    assert "127.0.0" not in v6
    assert "::6/128" in sh("ip", "netns", "exec", netns, "ip", "-6", "addr", "show", "lo").stdout
    assert save(netns, "nft") == REFERENCE_LISTING


def test_dual_stack_env_forces_ipv6(netns: str) -> None:
    result = init(netns, *INJECTOR_ARGS, env={"ISTIO_DUAL_STACK": "true"})
    assert result.returncode == 0, result.stderr
    assert "-s ::6/128 -o lo -j RETURN" in save(netns, "nft", v6=True)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_kernel_refusal_names_the_rule_and_applies_nothing(netns: str, backend: str) -> None:
    # The owner match is only valid in OUTPUT/POSTROUTING: the kernel refuses it in
    # PREROUTING. The script goes through the real apply path; nothing may be left behind.
    code = (
        "import sys\n"
        "from pysidecar.interception import apply, backend as b\n"
        "from pysidecar.interception.rules import Family, Rule, RuleSet\n"
        "rs = RuleSet(Family.V4, (\n"
        "    Rule('nat', 'ISTIO_OUTPUT', ('-j', 'RETURN')),\n"
        "    Rule('nat', 'PREROUTING', ('-m', 'owner', '--uid-owner', '1337', '-j', 'ISTIO_OUTPUT')),\n"
        "))\n"
        f"be = b.detect({backend!r})\n"
        "try:\n"
        "    apply.apply_family(be, Family.V4, rs)\n"
        "except apply.ApplyError as exc:\n"
        "    print(exc); sys.exit(1)\n"
    )
    result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                            capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rule refused at line" in result.stdout
    assert "PREROUTING" in result.stdout or "COMMIT of table nat" in result.stdout
    assert "ISTIO_" not in save(netns, backend, table=None)
