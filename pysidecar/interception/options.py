"""What `pysidecar init` was asked to do: istio-iptables' flags and env vars, parsed and checked.

Promises:
- `InterceptionOptions` is a frozen dataclass of already-validated values (ports are ints in
  1..65535, CIDRs are `ipaddress` networks, interface names are plausible). Nothing downstream
  re-validates; the rule generator trusts it.
- `options_from_sources(flags, env)` applies istio-iptables' precedence: a flag given on the
  command line (even as an empty string, e.g. `-x ""`) beats its environment variable, which
  beats the default. It never touches the system.
- Every refusal is an `OptionsError` naming the flag (`-x/--istio-service-exclude-cidr`), so the
  CLI can print it and exit 2 before anything is applied.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Mode = Literal["REDIRECT", "TPROXY"]
BinaryChoice = Literal["legacy", "nft"]

# The port the validation client aims at; nothing listens there, only the redirect reaches us.
DEFAULT_PROBE_PORT = 15002
# istio-iptables waits "a while"; the brief for pysidecar says 5 s is the contract.
DEFAULT_PROBE_TIMEOUT = 5.0
# Istio's TPROXY defaults (constants.DefaultInboundTProxyMark / RouteTable).
DEFAULT_TPROXY_MARK = 1337
DEFAULT_TPROXY_ROUTE_TABLE = 133
# Where the agent's DNS proxy listens (constants.IstioAgentDNSListenerPort).
AGENT_DNS_PORT = 15053

# Linux IFNAMSIZ is 16 including the NUL; iptables also accepts a trailing '+' wildcard.
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\+?$")
# --uid-owner/--gid-owner take a number or an account name.
_OWNER_RE = re.compile(r"^(\d+|[a-z_][a-z0-9_.-]*\$?)$")


class OptionsError(ValueError):
    """A flag or env var with a value we refuse; `flag` is how the user spelled the option."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.message = message


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """One istio-iptables option: its short and long spelling, env var and default."""

    dest: str
    short: str | None
    long: str
    env: str | None
    default: str
    help: str

    @property
    def display(self) -> str:
        return f"{self.short}/{self.long}" if self.short else self.long


# The string-valued flags, in istio-iptables' order. The env var is the long name upper-cased
# with '-' -> '_' (viper's AutomaticEnv), except where noted.
STRING_FLAGS: tuple[FlagSpec, ...] = (
    # -p has no env var on purpose: Kubernetes service links set ENVOY_PORT=tcp://ip:port in
    # every pod of a namespace that has a Service called "envoy".
    FlagSpec("envoy_port", "-p", "--envoy-port", None, "15001", "outbound capture port"),
    FlagSpec("inbound_capture_port", "-z", "--inbound-capture-port", "INBOUND_CAPTURE_PORT",
             "15006", "inbound capture port"),
    FlagSpec("inbound_tunnel_port", "-e", "--inbound-tunnel-port", "INBOUND_TUNNEL_PORT",
             "15008", "tunnel (HBONE) port, never captured inbound"),
    FlagSpec("proxy_uid", "-u", "--proxy-uid", "PROXY_UID", "1337",
             "proxy uid(s) whose traffic is not captured, comma list"),
    FlagSpec("proxy_gid", "-g", "--proxy-gid", "PROXY_GID", "",
             "proxy gid(s) whose traffic is not captured (default: same as -u)"),
    FlagSpec("inbound_interception_mode", "-m", "--istio-inbound-interception-mode",
             "ISTIO_INBOUND_INTERCEPTION_MODE", "REDIRECT", "REDIRECT or TPROXY"),
    FlagSpec("inbound_ports", "-b", "--istio-inbound-ports", "ISTIO_INBOUND_PORTS", "",
             "inbound ports to capture; '*' = all, '' = none"),
    FlagSpec("local_exclude_ports", "-d", "--istio-local-exclude-ports",
             "ISTIO_LOCAL_EXCLUDE_PORTS", "", "inbound ports not captured (with -b '*')"),
    FlagSpec("service_cidr", "-i", "--istio-service-cidr", "ISTIO_SERVICE_CIDR", "",
             "outbound CIDRs to capture; '*' = all, '' = none"),
    FlagSpec("service_exclude_cidr", "-x", "--istio-service-exclude-cidr",
             "ISTIO_SERVICE_EXCLUDE_CIDR", "", "outbound CIDRs never captured"),
    FlagSpec("outbound_ports", "-q", "--istio-outbound-ports", "ISTIO_OUTBOUND_PORTS", "",
             "outbound ports always captured"),
    FlagSpec("local_outbound_ports_exclude", "-o", "--istio-local-outbound-ports-exclude",
             "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "", "outbound ports never captured"),
    FlagSpec("exclude_interfaces", "-c", "--istio-exclude-interfaces",
             "ISTIO_EXCLUDE_INTERFACES", "", "interfaces never captured"),
    FlagSpec("kube_virt_interfaces", "-k", "--kube-virt-interfaces", "KUBE_VIRT_INTERFACES", "",
             "interfaces whose inbound traffic is treated as outbound"),
    FlagSpec("inbound_tproxy_mark", "-t", "--istio-inbound-tproxy-mark",
             "ISTIO_INBOUND_TPROXY_MARK", str(DEFAULT_TPROXY_MARK), "TPROXY packet mark"),
    FlagSpec("inbound_tproxy_route_table", "-r", "--istio-inbound-tproxy-route-table",
             "ISTIO_INBOUND_TPROXY_ROUTE_TABLE", str(DEFAULT_TPROXY_ROUTE_TABLE),
             "TPROXY policy routing table"),
    FlagSpec("iptables_probe_port", None, "--iptables-probe-port", "IPTABLES_PROBE_PORT",
             str(DEFAULT_PROBE_PORT), "port the --run-validation client connects to"),
    FlagSpec("probe_timeout", None, "--probe-timeout", "PROBE_TIMEOUT",
             str(DEFAULT_PROBE_TIMEOUT), "seconds --run-validation waits (e.g. 5 or 5s)"),
    FlagSpec("force_iptables_binary", None, "--force-iptables-binary", "FORCE_IPTABLES_BINARY",
             "", "legacy or nft instead of autodetection"),
)

# Boolean flags: (dest, short, long, env vars in order of preference).
BOOL_FLAGS: tuple[tuple[str, str | None, str, tuple[str, ...], str], ...] = (
    ("dry_run", "-n", "--dry-run", ("DRY_RUN",), "print the iptables-restore input, change nothing"),
    ("cleanup_only", None, "--cleanup-only", ("CLEANUP_ONLY",), "remove every chain and jump we own"),
    ("run_validation", None, "--run-validation", ("RUN_VALIDATION",),
     "prove redirection works (exit 126 if not)"),
    ("redirect_dns", None, "--redirect-dns", ("REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"),
     "redirect DNS to the agent on 15053"),
    ("capture_all_dns", None, "--capture-all-dns", ("CAPTURE_ALL_DNS",),
     "with --redirect-dns, capture all port-53 traffic, not just resolv.conf servers"),
    ("dual_stack", None, "--dual-stack", ("DUAL_STACK", "ISTIO_DUAL_STACK", "ISTIO_AGENT_DUAL_STACK"),
     "install IPv6 rules even without a global IPv6 address"),
)

_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"", "0", "f", "false", "n", "no", "off"}


@dataclass(frozen=True, slots=True)
class InterceptionOptions:
    """Validated istio-iptables configuration. Defaults are the injector's no-flag defaults."""

    envoy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: tuple[str, ...] = ("1337",)
    proxy_gids: tuple[str, ...] = ("1337",)
    mode: Mode = "REDIRECT"
    # -b: all ports ("*") or the listed ones; empty and not all = no inbound capture.
    inbound_ports_all: bool = False
    inbound_ports: tuple[int, ...] = ()
    inbound_ports_exclude: tuple[int, ...] = ()
    # -i: all destinations ("*") or the listed CIDRs; empty and not all = no outbound capture.
    outbound_ranges_all: bool = False
    outbound_ranges_include: tuple[IPNetwork, ...] = ()
    outbound_ranges_exclude: tuple[IPNetwork, ...] = ()
    outbound_ports_include: tuple[int, ...] = ()
    outbound_ports_exclude: tuple[int, ...] = ()
    exclude_interfaces: tuple[str, ...] = ()
    kube_virt_interfaces: tuple[str, ...] = ()
    tproxy_mark: int = DEFAULT_TPROXY_MARK
    tproxy_route_table: int = DEFAULT_TPROXY_ROUTE_TABLE
    # ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: what the app's own-loopback RETURN rule matches.
    ipv4_loopback_cidr: ipaddress.IPv4Network = field(
        default_factory=lambda: ipaddress.IPv4Network("127.0.0.1/32"))
    redirect_dns: bool = False
    capture_all_dns: bool = False
    dns_servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    dual_stack: bool = False
    dry_run: bool = False
    cleanup_only: bool = False
    run_validation: bool = False
    force_iptables_binary: BinaryChoice | None = None
    probe_port: int = DEFAULT_PROBE_PORT
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT


def split_list(value: str) -> list[str]:
    """Istio's config.Split: comma list, blanks dropped, items trimmed."""
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_port(flag: str, text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise OptionsError(flag, f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise OptionsError(flag, f"port {port} is out of range 1-65535")
    return port


def parse_ports(flag: str, text: str) -> tuple[int, ...]:
    ports = tuple(parse_port(flag, item) for item in split_list(text))
    return tuple(dict.fromkeys(ports))


def parse_cidrs(flag: str, text: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for item in split_list(text):
        if item == "*":
            raise OptionsError(flag, "'*' cannot be combined with other CIDRs")
        try:
            # strict=False: Istio passes "10.0.0.1/8" through and iptables stores 10.0.0.0/8;
            # we normalise up front so the wanted rules compare equal to iptables-save.
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise OptionsError(flag, f"{item!r} is not a CIDR ({exc})") from None
    return tuple(dict.fromkeys(out))


def parse_interfaces(flag: str, text: str) -> tuple[str, ...]:
    names = split_list(text)
    for name in names:
        if not _IFACE_RE.match(name):
            raise OptionsError(flag, f"{name!r} is not an interface name")
    return tuple(dict.fromkeys(names))


def parse_owners(flag: str, text: str) -> tuple[str, ...]:
    owners = split_list(text)
    if not owners:
        raise OptionsError(flag, "at least one id is required")
    for owner in owners:
        if not _OWNER_RE.match(owner):
            raise OptionsError(flag, f"{owner!r} is not a numeric id or account name")
        if owner.isdigit() and int(owner) > 0xFFFFFFFF:
            raise OptionsError(flag, f"{owner} is out of range")
    return tuple(dict.fromkeys(owners))


def parse_bool(flag: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise OptionsError(flag, f"{text!r} is not a boolean")


def parse_duration(flag: str, text: str) -> float:
    # Istio's --probe-timeout is a Go duration ("5s"); a bare number means seconds.
    raw = text.strip()
    scale = 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if raw.endswith(suffix):
            raw, scale = raw[: -len(suffix)], factor
            break
    try:
        seconds = float(raw) * scale
    except ValueError:
        raise OptionsError(flag, f"{text!r} is not a duration") from None
    if not 0 < seconds <= 3600:
        raise OptionsError(flag, f"{text!r} must be between 0 and 1h")
    return seconds


def _resolve(spec: FlagSpec, flags: Mapping[str, object], env: Mapping[str, str]) -> tuple[str, str]:
    """Return (value, how-to-name-it) following flag > env > default."""
    given = flags.get(spec.dest)
    if given is not None:
        return str(given), spec.display
    if spec.env is not None and spec.env in env:
        return env[spec.env], f"{spec.display} (from ${spec.env})"
    return spec.default, spec.display


def _resolve_bool(dest: str, long: str, envs: tuple[str, ...], flags: Mapping[str, object],
                  env: Mapping[str, str]) -> bool:
    given = flags.get(dest)
    if given is not None:
        return bool(given)
    for name in envs:
        if name in env:
            return parse_bool(f"{long} (from ${name})", env[name])
    return False


def options_from_sources(
    flags: Mapping[str, object],
    env: Mapping[str, str],
    dns_servers: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (),
) -> InterceptionOptions:
    """Build validated options from parsed flags (None = not given) and the environment."""
    raw: dict[str, tuple[str, str]] = {s.dest: _resolve(s, flags, env) for s in STRING_FLAGS}

    def port(dest: str) -> int:
        value, name = raw[dest]
        return parse_port(name, value)

    uids = parse_owners(raw["proxy_uid"][1], raw["proxy_uid"][0])
    gid_text, gid_name = raw["proxy_gid"]
    # istio-iptables: "-g" defaults to whatever "-u" resolved to.
    gids = parse_owners(gid_name, gid_text) if gid_text.strip() else uids

    mode_text, mode_name = raw["inbound_interception_mode"]
    mode_up = mode_text.strip().upper() or "REDIRECT"
    if mode_up not in ("REDIRECT", "TPROXY"):
        raise OptionsError(mode_name, f"{mode_text!r} is not REDIRECT or TPROXY")
    mode: Mode = "TPROXY" if mode_up == "TPROXY" else "REDIRECT"

    b_text, b_name = raw["inbound_ports"]
    inbound_all = b_text.strip() == "*"
    inbound_ports = () if inbound_all else parse_ports(b_name, b_text)

    i_text, i_name = raw["service_cidr"]
    outbound_all = i_text.strip() == "*"
    include = () if outbound_all else parse_cidrs(i_name, i_text)

    x_text, x_name = raw["service_exclude_cidr"]
    if "*" in split_list(x_text):
        # Istio: "invalid value for OUTBOUND_IP_RANGES_EXCLUDE": excluding everything would
        # silently turn the sidecar off; say so instead.
        raise OptionsError(x_name, "'*' is not allowed: use -i '' to capture no outbound traffic")
    exclude = parse_cidrs(x_name, x_text)

    mark_text, mark_name = raw["inbound_tproxy_mark"]
    try:
        mark = int(mark_text, 0)
    except ValueError:
        raise OptionsError(mark_name, f"{mark_text!r} is not a packet mark") from None
    if not 1 <= mark <= 0xFFFFFFFF:
        raise OptionsError(mark_name, f"{mark} is out of range")
    table_text, table_name = raw["inbound_tproxy_route_table"]
    try:
        route_table = int(table_text, 10)
    except ValueError:
        raise OptionsError(table_name, f"{table_text!r} is not a routing table number") from None
    if not 1 <= route_table <= 0xFFFFFFFF or route_table in (253, 254, 255):
        raise OptionsError(table_name, f"{route_table} is not a usable routing table")

    binary_text, binary_name = raw["force_iptables_binary"]
    binary: BinaryChoice | None
    if binary_text.strip() == "":
        binary = None
    elif binary_text.strip() in ("legacy", "nft"):
        binary = "legacy" if binary_text.strip() == "legacy" else "nft"
    else:
        raise OptionsError(binary_name, f"{binary_text!r} is not 'legacy' or 'nft'")

    loopback_text = env.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32")
    try:
        loopback = ipaddress.IPv4Network(loopback_text.strip(), strict=False)
    except ValueError:
        raise OptionsError("$ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                           f"{loopback_text!r} is not an IPv4 CIDR") from None
    if not loopback.network_address.is_loopback:
        raise OptionsError("$ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                           f"{loopback_text!r} is not inside 127.0.0.0/8")

    bools = {dest: _resolve_bool(dest, long, envs, flags, env)
             for dest, _short, long, envs, _help in BOOL_FLAGS}

    return InterceptionOptions(
        envoy_port=port("envoy_port"),
        inbound_capture_port=port("inbound_capture_port"),
        inbound_tunnel_port=port("inbound_tunnel_port"),
        proxy_uids=uids,
        proxy_gids=gids,
        mode=mode,
        inbound_ports_all=inbound_all,
        inbound_ports=inbound_ports,
        inbound_ports_exclude=parse_ports(raw["local_exclude_ports"][1], raw["local_exclude_ports"][0]),
        outbound_ranges_all=outbound_all,
        outbound_ranges_include=include,
        outbound_ranges_exclude=exclude,
        outbound_ports_include=parse_ports(raw["outbound_ports"][1], raw["outbound_ports"][0]),
        outbound_ports_exclude=parse_ports(raw["local_outbound_ports_exclude"][1],
                                           raw["local_outbound_ports_exclude"][0]),
        exclude_interfaces=parse_interfaces(raw["exclude_interfaces"][1], raw["exclude_interfaces"][0]),
        kube_virt_interfaces=parse_interfaces(raw["kube_virt_interfaces"][1],
                                              raw["kube_virt_interfaces"][0]),
        tproxy_mark=mark,
        tproxy_route_table=route_table,
        ipv4_loopback_cidr=loopback,
        redirect_dns=bools["redirect_dns"],
        capture_all_dns=bools["capture_all_dns"],
        dns_servers=dns_servers,
        dual_stack=bools["dual_stack"],
        dry_run=bools["dry_run"],
        cleanup_only=bools["cleanup_only"],
        run_validation=bools["run_validation"],
        force_iptables_binary=binary,
        probe_port=port("iptables_probe_port"),
        probe_timeout=parse_duration(raw["probe_timeout"][1], raw["probe_timeout"][0]),
    )
