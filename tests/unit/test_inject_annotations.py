"""Pod annotations → init flags, checked against what Istio's injection template renders.

Each row: the pod's annotations, and the init container's args Istio's injector produces with
its default values (the rendering of manifests/charts/istio-control/istio-discovery/files/
injection-template.yaml, without the `istio-iptables` word and `--log_output_level`).
"""

from __future__ import annotations

import pytest

from pysidecar.inject.annotations import AnnotationError, exclude_inbound_port, init_args, validate

BASE = ["-p", "15001", "-z", "15006", "-u", "1337"]
DEFAULT = [*BASE, "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]
T = "traffic.sidecar.istio.io/"


def with_(flag: str, value: str) -> list[str]:
    """DEFAULT with one of its flags' value replaced."""
    out = list(DEFAULT)
    out[out.index(flag) + 1] = value
    return out


GOLDEN: list[tuple[str, dict[str, str], list[str]]] = [
    ("none", {}, DEFAULT),
    ("includeOutboundIPRanges", {T + "includeOutboundIPRanges": "10.96.0.0/12,172.20.0.0/16"},
     with_("-i", "10.96.0.0/12,172.20.0.0/16")),
    ("includeOutboundIPRanges empty", {T + "includeOutboundIPRanges": ""}, with_("-i", "")),
    ("excludeOutboundIPRanges", {T + "excludeOutboundIPRanges": "10.0.0.0/8"}, with_("-x", "10.0.0.0/8")),
    ("includeInboundPorts", {T + "includeInboundPorts": "8080,9090"}, with_("-b", "8080,9090")),
    ("includeInboundPorts none", {T + "includeInboundPorts": ""}, with_("-b", "")),
    ("excludeInboundPorts", {T + "excludeInboundPorts": "4,5,6"}, with_("-d", "15090,15021,4,5,6,15020")),
    ("excludeInboundPorts has status port", {T + "excludeInboundPorts": "15020,22"},
     with_("-d", "15090,15021,15020,22")),
    ("status port moved", {"status.sidecar.istio.io/port": "15555"}, with_("-d", "15090,15021,15555")),
    ("status port off", {"status.sidecar.istio.io/port": "0"}, with_("-d", "15090,15021")),
    ("status port off + excluded", {"status.sidecar.istio.io/port": "0", T + "excludeInboundPorts": "22"},
     with_("-d", "15090,15021,22")),
    ("TPROXY", {"sidecar.istio.io/interceptionMode": "TPROXY"}, with_("-m", "TPROXY")),
    ("includeOutboundPorts", {T + "includeOutboundPorts": "5432"}, [*DEFAULT, "-q", "5432"]),
    ("excludeOutboundPorts", {T + "excludeOutboundPorts": "7,8,9"}, [*DEFAULT, "-o", "7,8,9"]),
    ("excludeOutboundPorts empty", {T + "excludeOutboundPorts": ""}, [*DEFAULT, "-o", ""]),
    ("kubevirtInterfaces", {T + "kubevirtInterfaces": "net1,net2"}, [*DEFAULT, "-k", "net1,net2"]),
    ("reroute-virtual-interfaces wins", {T + "kubevirtInterfaces": "net1", "istio.io/reroute-virtual-interfaces": "net9"},
     [*DEFAULT, "-k", "net9"]),
    ("excludeInterfaces", {T + "excludeInterfaces": "eth1"}, [*DEFAULT, "-c", "eth1"]),
    ("all, in Istio's order",
     {T + "excludeInterfaces": "eth1", T + "kubevirtInterfaces": "net1", T + "excludeOutboundPorts": "25",
      T + "includeOutboundPorts": "443", T + "excludeInboundPorts": "22", T + "includeInboundPorts": "80",
      T + "excludeOutboundIPRanges": "10.0.0.0/8", T + "includeOutboundIPRanges": "0.0.0.0/0"},
     [*BASE, "-m", "REDIRECT", "-i", "0.0.0.0/0", "-x", "10.0.0.0/8", "-b", "80", "-d", "15090,15021,22,15020",
      "-q", "443", "-o", "25", "-k", "net1", "-c", "eth1"]),
]  # fmt: skip


@pytest.mark.parametrize(("annotations", "expected"), [(a, e) for _, a, e in GOLDEN],
                         ids=[name for name, _, _ in GOLDEN])  # fmt: skip
def test_annotation_maps_to_flag(annotations: dict[str, str], expected: list[str]) -> None:
    validate(annotations)
    assert init_args(annotations) == expected


def test_default_args_are_istios() -> None:
    # shared/reference/interception.md: -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
    assert init_args({}) == DEFAULT


@pytest.mark.parametrize(("port", "excluded", "expected"), [
    ("15020", "", "15020"),
    ("15020", "1,2", "1,2,15020"),
    ("15020", "1, 2,", "1,2,15020"),
    ("15020", "15020", "15020"),
    ("0", "1", "1"),
    ("", "1", "1"),
])  # fmt: skip
def test_exclude_inbound_port_is_istios(port: str, excluded: str, expected: str) -> None:
    assert exclude_inbound_port(port, excluded) == expected


BAD: list[tuple[str, str]] = [
    (T + "excludeOutboundIPRanges", "10.0.0.0/33"),
    (T + "excludeOutboundIPRanges", "*"),
    (T + "includeOutboundIPRanges", "10.0.0.0/8,nope"),
    (T + "includeOutboundIPRanges", "fe80::/129"),
    (T + "includeInboundPorts", "70000"),
    (T + "excludeInboundPorts", "ssh"),
    (T + "excludeOutboundPorts", "0"),
    (T + "includeOutboundPorts", "-1"),
    (T + "excludeInterfaces", "eth 0"),
    (T + "kubevirtInterfaces", "an-interface-name-too-long"),
    ("sidecar.istio.io/interceptionMode", "redirect"),
    ("status.sidecar.istio.io/port", "15020,15021"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n.split('/')[-1]}={v}" for n, v in BAD])
def test_bad_value_names_the_annotation(name: str, value: str) -> None:
    with pytest.raises(AnnotationError) as err:
        validate({name: value})
    assert err.value.annotation == name
    assert name in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("value", ["*", "", "10.0.0.1/8", "fd00::/8, 192.168.0.0/16"])
def test_good_include_ranges(value: str) -> None:
    validate({T + "includeOutboundIPRanges": value})


@pytest.mark.parametrize("annotations", [a for _, a, _ in GOLDEN], ids=[name for name, _, _ in GOLDEN])
def test_pysidecar_init_accepts_what_the_injector_passes(annotations: dict[str, str]) -> None:
    """The contract between inject and init: every generated arg list parses in `pysidecar init`."""
    from pysidecar.cli import build_parser
    from pysidecar.interception.cli import BOOL_FLAGS, STRING_FLAGS
    from pysidecar.interception.options import options_from_sources

    argv = ["init", *init_args(annotations)]
    ns = build_parser(argv).parse_args(argv)
    flags = {name: getattr(ns, name, None) for name in [s.dest for s in STRING_FLAGS] + [b[0] for b in BOOL_FLAGS]}
    opts = options_from_sources(flags, {})
    assert opts.inbound_capture_port == 15006
