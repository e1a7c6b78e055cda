"""Option parsing: istio-iptables flags and env vars, precedence, refusals naming the flag."""

from __future__ import annotations

import argparse
import ipaddress

import pytest

from pysidecar.interception import cli
from pysidecar.interception.options import (
    InterceptionOptions,
    OptionsError,
    options_from_sources,
)


def parse(argv: list[str], env: dict[str, str] | None = None) -> InterceptionOptions:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    ns = parser.parse_args(argv)
    return options_from_sources(vars(ns), env or {})


def test_defaults_match_istio() -> None:
    o = parse([])
    assert (o.envoy_port, o.inbound_capture_port, o.inbound_tunnel_port) == (15001, 15006, 15008)
    assert o.proxy_uids == ("1337",) and o.proxy_gids == ("1337",)
    assert o.mode == "REDIRECT"
    assert not o.inbound_ports_all and o.inbound_ports == ()
    assert not o.outbound_ranges_all and o.outbound_ranges_include == ()
    assert not (o.dry_run or o.cleanup_only or o.run_validation or o.redirect_dns)
    assert o.force_iptables_binary is None
    assert o.probe_port == 15002 and o.probe_timeout == 5.0


def test_injector_args() -> None:
    o = parse(["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
               "-b", "*", "-d", "15090,15021,15020"])
    assert o.outbound_ranges_all and o.inbound_ports_all
    assert o.inbound_ports_exclude == (15090, 15021, 15020)
    assert o.outbound_ranges_exclude == ()


LONG_FLAGS = [
    (["--envoy-port", "1"], "envoy_port", 1),
    (["--inbound-capture-port", "2"], "inbound_capture_port", 2),
    (["--inbound-tunnel-port", "3"], "inbound_tunnel_port", 3),
    (["--proxy-uid", "7"], "proxy_uids", ("7",)),
    (["--proxy-gid", "8"], "proxy_gids", ("8",)),
    (["--istio-inbound-interception-mode", "TPROXY"], "mode", "TPROXY"),
    (["--istio-inbound-ports", "80,81"], "inbound_ports", (80, 81)),
    (["--istio-local-exclude-ports", "22"], "inbound_ports_exclude", (22,)),
    (["--istio-service-cidr", "10.0.0.0/8"], "outbound_ranges_include",
     (ipaddress.ip_network("10.0.0.0/8"),)),
    (["--istio-service-exclude-cidr", "10.1.0.0/16"], "outbound_ranges_exclude",
     (ipaddress.ip_network("10.1.0.0/16"),)),
    (["--istio-outbound-ports", "3306"], "outbound_ports_include", (3306,)),
    (["--istio-local-outbound-ports-exclude", "25"], "outbound_ports_exclude", (25,)),
    (["--istio-exclude-interfaces", "eth1"], "exclude_interfaces", ("eth1",)),
    (["--kube-virt-interfaces", "eth2"], "kube_virt_interfaces", ("eth2",)),
    (["--dry-run"], "dry_run", True),
    (["-n"], "dry_run", True),
    (["--cleanup-only"], "cleanup_only", True),
    (["--run-validation"], "run_validation", True),
    (["--redirect-dns"], "redirect_dns", True),
    (["--force-iptables-binary", "legacy"], "force_iptables_binary", "legacy"),
    (["--force-iptables-binary", "nft"], "force_iptables_binary", "nft"),
]


@pytest.mark.parametrize(("argv", "field", "value"), LONG_FLAGS, ids=[a[0][0] for a in LONG_FLAGS])
def test_long_flags(argv: list[str], field: str, value: object) -> None:
    assert getattr(parse(argv), field) == value


ENV_VARS = [
    ("INBOUND_CAPTURE_PORT", "16006", "inbound_capture_port", 16006),
    ("INBOUND_TUNNEL_PORT", "16008", "inbound_tunnel_port", 16008),
    ("PROXY_UID", "1,2", "proxy_uids", ("1", "2")),
    ("PROXY_GID", "3", "proxy_gids", ("3",)),
    ("ISTIO_INBOUND_INTERCEPTION_MODE", "TPROXY", "mode", "TPROXY"),
    ("ISTIO_INBOUND_PORTS", "*", "inbound_ports_all", True),
    ("ISTIO_LOCAL_EXCLUDE_PORTS", "15090", "inbound_ports_exclude", (15090,)),
    ("ISTIO_SERVICE_CIDR", "*", "outbound_ranges_all", True),
    ("ISTIO_SERVICE_EXCLUDE_CIDR", "10.0.0.0/8", "outbound_ranges_exclude",
     (ipaddress.ip_network("10.0.0.0/8"),)),
    ("ISTIO_OUTBOUND_PORTS", "80", "outbound_ports_include", (80,)),
    ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "25", "outbound_ports_exclude", (25,)),
    ("ISTIO_EXCLUDE_INTERFACES", "eth1", "exclude_interfaces", ("eth1",)),
    ("KUBE_VIRT_INTERFACES", "eth2", "kube_virt_interfaces", ("eth2",)),
    ("DRY_RUN", "true", "dry_run", True),
    ("REDIRECT_DNS", "true", "redirect_dns", True),
    ("ISTIO_DUAL_STACK", "true", "dual_stack", True),
]


@pytest.mark.parametrize(("env", "text", "field", "value"), ENV_VARS, ids=[e[0] for e in ENV_VARS])
def test_env_vars(env: str, text: str, field: str, value: object) -> None:
    assert getattr(parse([], {env: text}), field) == value


def test_envoy_port_has_no_env_var() -> None:
    # Kubernetes service links would set ENVOY_PORT=tcp://... for a Service named "envoy".
    assert parse([], {"ENVOY_PORT": "tcp://10.0.0.1:80"}).envoy_port == 15001


def test_flag_beats_env() -> None:
    env = {"INBOUND_CAPTURE_PORT": "16006", "ISTIO_SERVICE_EXCLUDE_CIDR": "10.0.0.0/8",
           "PROXY_UID": "99"}
    o = parse(["-z", "17006", "-x", "", "-u", "1337"], env)
    assert o.inbound_capture_port == 17006
    assert o.outbound_ranges_exclude == ()  # an explicit empty flag still wins
    assert o.proxy_uids == ("1337",)


REFUSALS = [
    (["-p", "99999"], "-p/--envoy-port"),
    (["-z", "0"], "-z/--inbound-capture-port"),
    (["-e", "http"], "-e/--inbound-tunnel-port"),
    (["-i", "10.0.0.0/33"], "-i/--istio-service-cidr"),
    (["-x", "*"], "-x/--istio-service-exclude-cidr"),
    (["-x", "10.0.0.0/8,*"], "-x/--istio-service-exclude-cidr"),
    (["-x", "not-a-cidr"], "-x/--istio-service-exclude-cidr"),
    (["-b", "80,70000"], "-b/--istio-inbound-ports"),
    (["-d", "abc"], "-d/--istio-local-exclude-ports"),
    (["-q", "-1"], "-q/--istio-outbound-ports"),
    (["-o", "65536"], "-o/--istio-local-outbound-ports-exclude"),
    (["-m", "NAT"], "-m/--istio-inbound-interception-mode"),
    (["-u", ""], "-u/--proxy-uid"),
    (["-u", "1337;rm"], "-u/--proxy-uid"),
    (["-c", "eth0 -j ACCEPT"], "-c/--istio-exclude-interfaces"),
    (["-k", "averyveryverylongname"], "-k/--kube-virt-interfaces"),
    (["--force-iptables-binary", "xtables"], "--force-iptables-binary"),
]


@pytest.mark.parametrize(("argv", "flag"), REFUSALS, ids=[" ".join(r[0]) for r in REFUSALS])
def test_bad_values_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(OptionsError) as info:
        parse(argv)
    assert info.value.flag.startswith(flag)
    assert str(info.value).startswith(flag)


def test_bad_env_value_names_flag_and_env() -> None:
    with pytest.raises(OptionsError) as info:
        parse([], {"INBOUND_CAPTURE_PORT": "99999"})
    assert "-z/--inbound-capture-port" in str(info.value)
    assert "$INBOUND_CAPTURE_PORT" in str(info.value)


def test_cli_main_exits_2_on_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["-x", "*"])) == 2
    assert "-x/--istio-service-exclude-cidr" in capsys.readouterr().err


def test_options_are_frozen() -> None:
    o = parse([])
    with pytest.raises(AttributeError):
        o.envoy_port = 1  # type: ignore[misc]


def test_cidr_host_bits_are_normalised_and_bare_ip_is_host_route() -> None:
    o = parse(["-i", "10.1.2.3/8,192.0.2.1"])
    assert [str(n) for n in o.outbound_ranges_include] == ["10.0.0.0/8", "192.0.2.1/32"]


def test_mode_case_insensitive_and_empty_means_redirect() -> None:
    assert parse(["-m", "tproxy"]).mode == "TPROXY"
    assert parse(["-m", ""]).mode == "REDIRECT"


def test_probe_timeout_go_duration() -> None:
    assert parse(["--probe-timeout", "2s"]).probe_timeout == 2.0
    assert parse(["--probe-timeout", "500ms"]).probe_timeout == 0.5
