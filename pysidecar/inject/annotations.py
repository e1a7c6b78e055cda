"""Pod annotations → `pysidecar init` arguments, the way Istio's injection template does it.

Promises:
- `init_args(annotations)` returns the istio-iptables argument list Istio's injector would
  render for a pod with these annotations and Istio's default values (includeIPRanges `*`,
  excludeIPRanges "", includeInboundPorts `*`, statusPort 15020):
  `-p 15001 -z 15006 -u 1337 -m MODE -i INC -x EXC -b IN -d 15090,15021,EXCL...`, then
  `-q` / `-o` only when their annotation is set, `-k` (istio.io/reroute-virtual-interfaces
  before traffic.sidecar.istio.io/kubevirtInterfaces), `-c`. Values are passed through as
  written, as Istio does; only `-d` is computed (Istio's `excludeInboundPort`: the status port is
  appended unless already listed, after the fixed 15090,15021).
- `validate(annotations)` checks every annotation this module reads and raises
  `AnnotationError(annotation, value, reason)` on the first bad one (a CIDR such as
  10.0.0.0/33, a port 70000, an unknown interception mode), so a bad pod never reaches a node.
- Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

PROXY_UID = "1337"
OUTBOUND_CAPTURE_PORT = "15001"
INBOUND_CAPTURE_PORT = "15006"
# Always excluded from inbound capture: Prometheus stats and readiness (Istio's template).
FIXED_EXCLUDED_INBOUND = "15090,15021"
DEFAULT_STATUS_PORT = "15020"

INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
STATUS_PORT = "status.sidecar.istio.io/port"
INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/includeOutboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"
KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
REROUTE_VIRTUAL_INTERFACES = "istio.io/reroute-virtual-interfaces"
EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"

MODES = ("REDIRECT", "TPROXY", "NONE")
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")  # IFNAMSIZ-1, the kernel's limit


class AnnotationError(ValueError):
    """A pod annotation the injector cannot turn into a valid init argument."""

    def __init__(self, annotation: str, value: str, reason: str) -> None:
        super().__init__(f"annotation {annotation}={value!r}: {reason}")
        self.annotation = annotation
        self.value = value
        self.reason = reason


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _check_ports(value: str) -> None:
    for item in _items(value):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"{item!r} is not a port number (1-65535)")


def _check_ports_or_star(value: str) -> None:
    if value.strip() != "*":
        _check_ports(value)


def _check_cidrs(value: str) -> None:
    for item in _items(value):
        try:
            # strict=False: host bits are allowed (10.0.0.1/8), as Go's netip.ParsePrefix allows.
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR") from None


def _check_cidrs_or_star(value: str) -> None:
    if value.strip() != "*":
        _check_cidrs(value)


def _check_interfaces(value: str) -> None:
    for item in _items(value):
        if not _IFACE_RE.match(item):
            raise ValueError(f"{item!r} is not an interface name")


def _check_mode(value: str) -> None:
    if value not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}")


def _check_status_port(value: str) -> None:
    if value.strip() != "0":
        _check_ports(value)
        if len(_items(value)) != 1:
            raise ValueError("must be a single port (or 0 for none)")


_VALIDATORS: dict[str, Callable[[str], None]] = {
    INTERCEPTION_MODE: _check_mode,
    STATUS_PORT: _check_status_port,
    INCLUDE_OUTBOUND_IP_RANGES: _check_cidrs_or_star,
    EXCLUDE_OUTBOUND_IP_RANGES: _check_cidrs,  # `*` here is rejected, as by istio-iptables -x
    INCLUDE_INBOUND_PORTS: _check_ports_or_star,
    EXCLUDE_INBOUND_PORTS: _check_ports,
    INCLUDE_OUTBOUND_PORTS: _check_ports,
    EXCLUDE_OUTBOUND_PORTS: _check_ports,
    KUBEVIRT_INTERFACES: _check_interfaces,
    REROUTE_VIRTUAL_INTERFACES: _check_interfaces,
    EXCLUDE_INTERFACES: _check_interfaces,
}


def validate(annotations: Mapping[str, str]) -> None:
    for name, check in _VALIDATORS.items():
        if name not in annotations:
            continue
        value = annotations[name]
        if not isinstance(value, str):
            raise AnnotationError(name, str(value), "annotation values must be strings (quote it)")
        try:
            check(value)
        except ValueError as exc:
            raise AnnotationError(name, value, str(exc)) from None


def interception_mode(annotations: Mapping[str, str]) -> str:
    return annotations.get(INTERCEPTION_MODE, "REDIRECT")


def exclude_inbound_port(port: str, excluded: str) -> str:
    """Istio's `excludeInboundPort`: add the status port to the list unless it is already there."""
    port = port.strip()
    if not port or port == "0":
        return excluded
    kept = []
    for item in excluded.split(","):
        if item == port:
            return excluded  # already excluded: Istio returns the list untouched
        if item.strip():
            kept.append(item.strip())
    return ",".join([*kept, port])


def init_args(annotations: Mapping[str, str]) -> list[str]:
    a = annotations
    excluded = exclude_inbound_port(a.get(STATUS_PORT, DEFAULT_STATUS_PORT), a.get(EXCLUDE_INBOUND_PORTS, ""))
    args = [
        "-p", OUTBOUND_CAPTURE_PORT,
        "-z", INBOUND_CAPTURE_PORT,
        "-u", PROXY_UID,
        "-m", interception_mode(a),
        "-i", a.get(INCLUDE_OUTBOUND_IP_RANGES, "*"),
        "-x", a.get(EXCLUDE_OUTBOUND_IP_RANGES, ""),
        "-b", a.get(INCLUDE_INBOUND_PORTS, "*"),
        "-d", f"{FIXED_EXCLUDED_INBOUND},{excluded}" if excluded else FIXED_EXCLUDED_INBOUND,
    ]  # fmt: skip
    # Set-but-empty still emits the flag: Istio tests `isset`, not the value.
    if INCLUDE_OUTBOUND_PORTS in a:
        args += ["-q", a[INCLUDE_OUTBOUND_PORTS]]
    if EXCLUDE_OUTBOUND_PORTS in a:
        args += ["-o", a[EXCLUDE_OUTBOUND_PORTS]]
    if REROUTE_VIRTUAL_INTERFACES in a:
        args += ["-k", a[REROUTE_VIRTUAL_INTERFACES]]
    elif KUBEVIRT_INTERFACES in a:
        args += ["-k", a[KUBEVIRT_INTERFACES]]
    if EXCLUDE_INTERFACES in a:
        args += ["-c", a[EXCLUDE_INTERFACES]]
    return args
