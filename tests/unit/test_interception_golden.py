"""Golden tests of the pure rule generator, the way Istio tests capture.Run().

Expected outputs come from two places:
- Istio's own golden files (istio/istio tools/istio-iptables/pkg/capture/testdata/*.golden),
  pasted verbatim and normalised with `istio_to_save_form`, which rewrites Istio's argument
  order into the order iptables-save prints (what our generator emits) without changing
  meaning: `-o lo -s X` -> `-s X -o lo`, implicit `-m tcp`, marks in hex, TPROXY/CONNMARK
  defaults spelled out.
- Hand-written listings for flag combinations Istio has no golden for.
"""

from __future__ import annotations

import ipaddress

import pytest

from pysidecar.interception.options import InterceptionOptions, options_from_sources
from pysidecar.interception.render import render, render_listing
from pysidecar.interception.rules import Family, build_rule_set

INJECTOR_FLAGS = {
    "envoy_port": "15001", "inbound_capture_port": "15006", "proxy_uid": "1337",
    "inbound_interception_mode": "REDIRECT", "service_cidr": "*", "service_exclude_cidr": "",
    "inbound_ports": "*", "local_exclude_ports": "15090,15021,15020",
}

# interception.md, "The nat table those arguments produce" (real iptables-save -t nat).
REFERENCE_LISTING = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


def opts(**flags: str) -> InterceptionOptions:
    return options_from_sources(flags, {})


def body(o: InterceptionOptions, family: Family = Family.V4) -> list[str]:
    """Our restore script without table headers/COMMIT: declarations then rules."""
    return [line for line in render(build_rule_set(o, family)).lines if line != "COMMIT"]


# --- Istio golden normalisation ---------------------------------------------------------

_BASIC = ("-s", "-d", "-i", "-o", "-p")


def _hexmark(value: str) -> str:
    return hex(int(value, 0))


def istio_rule_to_save_form(line: str, v6: bool) -> str:
    words = line.split()
    head = words[:3] if words[0] == "-I" else words[:2]
    rest = words[len(head):]
    basic: dict[str, list[str]] = {}
    others: list[str] = []
    neg = False
    i = 0
    in_target = False
    while i < len(rest):
        w = rest[i]
        if w == "-j":
            in_target = True
        if w == "!":
            neg = True
            i += 1
            continue
        if w in _BASIC and not in_target:
            basic[w] = (["!"] if neg else []) + [w, rest[i + 1]]
            neg = False
            i += 2
            continue
        if neg:
            others.append("!")
        others.append(w)
        neg = False
        i += 1
    # implicit protocol match module before --dport/--sport
    proto = basic.get("-p", [None, None, None])[-1]
    out: list[str] = []
    have_module = False
    for j, w in enumerate(others):
        if w == "-m" and j + 1 < len(others) and others[j + 1] in ("tcp", "udp", "multiport"):
            have_module = True
        if w in ("--dport", "--sport") and not have_module:
            if out and out[-1] == "!":
                out.pop()
                out.extend(["-m", str(proto), "!"])
            else:
                out.extend(["-m", str(proto)])
            have_module = True
        out.append(w)
    text = " ".join(out)
    # value spellings iptables-save uses
    for src in ("--set-mark",):
        if src in out:
            k = out.index(src)
            text = text.replace(f"{src} {out[k + 1]}", f"--set-xmark {_hexmark(out[k + 1])}/0xffffffff")
    if "--mark" in out:
        k = out.index("--mark")
        text = text.replace(f"--mark {out[k + 1]}", f"--mark {_hexmark(out[k + 1])}", 1)
    if "TPROXY" in out:
        mark = out[out.index("--tproxy-mark") + 1].split("/")[0]
        port = out[out.index("--on-port") + 1]
        any_ip = "::" if v6 else "0.0.0.0"
        text = text.split("-j TPROXY")[0] + (
            f"-j TPROXY --on-port {port} --on-ip {any_ip} --tproxy-mark {_hexmark(mark)}/0xffffffff")
    if "--save-mark" in out or "--restore-mark" in out:
        text += " --nfmask 0xffffffff --ctmask 0xffffffff"
    text = text.replace("--to-port ", "--to-ports ")
    pre = " ".join(x for k in _BASIC for x in basic.get(k, []))
    return " ".join(p for p in (" ".join(head), pre, text) if p)


def istio_golden_to_ours(golden: str, v6: bool) -> list[str]:
    """One family's section of an Istio golden -> our body (declarations sorted first)."""
    decls: list[str] = []
    rules: list[str] = []
    table = ""
    for line in golden.strip().splitlines():
        line = line.strip()
        if line.startswith("* "):
            table = line[2:]
            if decls or rules:
                pass
            rules.append(f"*{table}")
        elif line.startswith("-N "):
            decls.append(f"{table}:{line[3:]}")
        elif line.startswith(("-A ", "-I ")):
            rules.append(istio_rule_to_save_form(line, v6))
    # our layout: per table, sorted declarations right after the header
    out: list[str] = []
    for line in rules:
        out.append(line)
        if line.startswith("*"):
            tab = line[1:]
            out.extend(f":{d.split(':', 1)[1]} - [0:0]" for d in sorted(
                d for d in decls if d.startswith(tab + ":")))
    return out


KUBE_VIRT_INTERFACES_GOLDEN = """
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-I PREROUTING 1 -i eth1 -j RETURN
-I PREROUTING 1 -i eth2 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth1 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth2 -j ISTIO_REDIRECT
COMMIT
"""

IPNETS_WITH_KUBE_VIRT_INTERFACES_GOLDEN = """
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-I PREROUTING 1 -i eth1 -j RETURN
-I PREROUTING 1 -i eth2 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-I PREROUTING 1 -i eth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth2 -d 10.0.0.0/8 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT
COMMIT
"""

INBOUND_PORTS_TPROXY_GOLDEN = """
* mangle
-N ISTIO_DIVERT
-N ISTIO_TPROXY
-N ISTIO_INBOUND
-A ISTIO_DIVERT -j MARK --set-mark 1337
-A ISTIO_DIVERT -j ACCEPT
-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 32000 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_TPROXY
-A ISTIO_INBOUND -p tcp --dport 31000 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_TPROXY
-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN
-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN
-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN
COMMIT
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"""

# ipv6-uid-gid.golden, ip6tables section. One line differs from the stored golden: that
# version of Istio jumped with `-A OUTPUT -p tcp -j ISTIO_OUTPUT`; current Istio (and
# interception.md) jump with `-A OUTPUT -j ISTIO_OUTPUT` so UDP exclusions can apply.
IPV6_UID_GID_GOLDEN_V6 = """
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-I PREROUTING 1 -i eth0 -j RETURN
-I PREROUTING 1 -i eth1 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 4000 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 5000 -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --gid-owner 2 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 2 -j RETURN
-A ISTIO_OUTPUT -d ::1/128 -j RETURN
-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN
-I PREROUTING 1 -i eth0 -d 2001:db8::/32 -j ISTIO_REDIRECT
-I PREROUTING 1 -i eth1 -d 2001:db8::/32 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 2001:db8::/32 -j ISTIO_REDIRECT
COMMIT
"""

ISTIO_GOLDENS = [
    ("kube-virt-interfaces", {"kube_virt_interfaces": "eth1,eth2", "service_cidr": "*"},
     Family.V4, KUBE_VIRT_INTERFACES_GOLDEN),
    ("ipnets-with-kube-virt-interfaces",
     {"kube_virt_interfaces": "eth1,eth2", "service_cidr": "10.0.0.0/8"},
     Family.V4, IPNETS_WITH_KUBE_VIRT_INTERFACES_GOLDEN),
    ("inbound-ports-tproxy", {"inbound_ports": "32000,31000", "inbound_interception_mode": "TPROXY"},
     Family.V4, INBOUND_PORTS_TPROXY_GOLDEN),
    ("ipv6-uid-gid", {"inbound_ports": "4000,5000", "local_exclude_ports": "6000,7000",
                      "kube_virt_interfaces": "eth0,eth1", "proxy_gid": "1,2", "proxy_uid": "3,4",
                      "service_exclude_cidr": "2001:db8::/32", "service_cidr": "2001:db8::/32"},
     Family.V6, IPV6_UID_GID_GOLDEN_V6),
]


@pytest.mark.parametrize(("name", "flags", "family", "golden"), ISTIO_GOLDENS,
                         ids=[g[0] for g in ISTIO_GOLDENS])
def test_matches_istio_golden(name: str, flags: dict[str, str], family: Family, golden: str) -> None:
    ours = [line for line in render(build_rule_set(opts(**flags), family)).lines if line != "COMMIT"]
    assert ours == istio_golden_to_ours(golden, family is Family.V6)


def test_injector_defaults_equal_reference_listing() -> None:
    assert render_listing(build_rule_set(opts(**INJECTOR_FLAGS), Family.V4)) == REFERENCE_LISTING


def test_injector_defaults_emit_order() -> None:
    assert body(opts(**INJECTOR_FLAGS)) == [
        "*nat",
        ":ISTIO_INBOUND - [0:0]",
        ":ISTIO_IN_REDIRECT - [0:0]",
        ":ISTIO_OUTPUT - [0:0]",
        ":ISTIO_REDIRECT - [0:0]",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
    ]


# --- per-flag goldens: only the lines each flag changes are spelled out ------------------

_COMMON_HEAD = [
    "*nat",
    ":ISTIO_INBOUND - [0:0]",
    ":ISTIO_IN_REDIRECT - [0:0]",
    ":ISTIO_OUTPUT - [0:0]",
    ":ISTIO_REDIRECT - [0:0]",
    "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
]


def _owner_rules(uids: tuple[str, ...] = ("1337",), gids: tuple[str, ...] = ("1337",),
                 loopback: str = "127.0.0.1/32") -> list[str]:
    out = ["-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"]
    for flag, ids in (("--uid-owner", uids), ("--gid-owner", gids)):
        for i in ids:
            out += [
                f"-A ISTIO_OUTPUT ! -d {loopback} -o lo -p tcp -m tcp ! --dport 15008 -m owner {flag} {i} -j ISTIO_IN_REDIRECT",
                f"-A ISTIO_OUTPUT -o lo -m owner ! {flag} {i} -j RETURN",
                f"-A ISTIO_OUTPUT -m owner {flag} {i} -j RETURN",
            ]
    return out


def test_no_flags_is_istio_empty_golden() -> None:
    # empty.golden: no inbound, no outbound capture; only the chains and guard rules.
    assert body(opts()) == [*_COMMON_HEAD, "-A OUTPUT -j ISTIO_OUTPUT", *_owner_rules(),
                            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"]


def test_inbound_port_list() -> None:
    assert body(opts(inbound_ports="32000,31000")) == [
        *_COMMON_HEAD,
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 32000 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 31000 -j ISTIO_IN_REDIRECT",
        "-A OUTPUT -j ISTIO_OUTPUT", *_owner_rules(), "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
    ]


def test_inbound_empty_means_no_prerouting_jump_and_d_ignored() -> None:
    lines = body(opts(inbound_ports="", local_exclude_ports="15090"))
    assert not any("PREROUTING" in line for line in lines)
    assert not any("15090" in line for line in lines)


def test_inbound_wildcard_with_excludes() -> None:
    lines = body(opts(inbound_ports="*", local_exclude_ports="22,15090"))
    i = lines.index("-A PREROUTING -p tcp -j ISTIO_INBOUND")
    assert lines[i + 1:i + 4] == [
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
    ]


def test_outbound_cidrs_exclude_ports_include_ports_exclude() -> None:
    lines = body(opts(service_cidr="10.0.0.0/8,192.168.0.0/16", service_exclude_cidr="10.96.0.0/12",
                      outbound_ports="3306", local_outbound_ports_exclude="22,25"))
    assert lines == [
        *_COMMON_HEAD,
        "-A OUTPUT -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 22 -j RETURN",
        "-A ISTIO_OUTPUT -p udp -m udp --dport 22 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 25 -j RETURN",
        "-A ISTIO_OUTPUT -p udp -m udp --dport 25 -j RETURN",
        *_owner_rules(),
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 3306 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 192.168.0.0/16 -j ISTIO_REDIRECT",
    ]


def test_outbound_empty_means_no_catch_all() -> None:
    lines = body(opts(service_cidr=""))
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" not in lines
    assert not any(line.endswith("-j ISTIO_REDIRECT") for line in lines)


def test_exclude_interfaces_come_first() -> None:
    lines = body(opts(exclude_interfaces="eth9,not-istio-nic", service_cidr="*"))
    assert lines[5:9] == [
        "-A PREROUTING -i eth9 -j RETURN",
        "-A OUTPUT -o eth9 -j RETURN",
        "-A PREROUTING -i not-istio-nic -j RETURN",
        "-A OUTPUT -o not-istio-nic -j RETURN",
    ]


def test_gid_differs_from_uid_and_multiple_uids() -> None:
    lines = body(opts(proxy_uid="1337,1338", proxy_gid="2000"))
    assert lines == [*_COMMON_HEAD, "-A OUTPUT -j ISTIO_OUTPUT",
                     *_owner_rules(("1337", "1338"), ("2000",)),
                     "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"]


def test_gid_defaults_to_uid_list() -> None:
    o = opts(proxy_uid="5,6")
    assert o.proxy_gids == ("5", "6")


def test_loopback_include_drops_app_to_self_return() -> None:
    # loopback-outbound-iprange.golden: an explicit loopback include keeps app->self captured.
    lines = body(opts(service_cidr="127.1.2.3/32"))
    assert not any("! --uid-owner" in line or "! --gid-owner" in line for line in lines)
    assert lines[-1] == "-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT"


def test_v4_and_v6_cidrs_split_by_family() -> None:
    o = opts(service_cidr="10.0.0.0/8,fd00::/8", service_exclude_cidr="10.1.0.0/16,fd00:1::/32")
    v4 = "\n".join(body(o, Family.V4))
    v6 = "\n".join(body(o, Family.V6))
    assert "fd00" not in v4 and "10.0.0.0/8" in v4
    assert "10.0.0.0/8" not in v6 and "-d fd00::/8 -j ISTIO_REDIRECT" in v6
    assert "-s ::6/128 -o lo -j RETURN" in v6 and "-d ::1/128 -j RETURN" in v6


def test_host_loopback_cidr_env() -> None:
    o = options_from_sources({"service_cidr": "*"}, {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"})
    lines = body(o)
    assert "-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN" in lines


def test_redirect_dns_rules() -> None:
    o = options_from_sources({"redirect_dns": True, "proxy_uid": "3", "proxy_gid": "1"}, {},
                             dns_servers=(ipaddress.ip_address("127.0.0.53"),))
    rules = render(build_rule_set(o, Family.V4)).lines
    assert "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT" in rules
    assert "-A ISTIO_OUTPUT -o lo -p tcp -m tcp ! --dport 53 -m owner ! --gid-owner 1 -j RETURN" in rules
    assert "-A ISTIO_OUTPUT_DNS -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053" in rules
    assert "-A ISTIO_INBOUND -s 127.0.0.53/32 -p udp -m udp --sport 53 -j CT --zone 1" in rules
    assert "*raw" in rules


def test_redirect_dns_without_servers_is_off() -> None:
    o = options_from_sources({"redirect_dns": True}, {})
    assert not any("53" in line for line in render(build_rule_set(o, Family.V4)).lines)


def test_generator_is_pure() -> None:
    o = opts(**INJECTOR_FLAGS)
    assert build_rule_set(o, Family.V4) == build_rule_set(o, Family.V4)
