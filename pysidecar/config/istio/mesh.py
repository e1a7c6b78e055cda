"""MeshConfig: a plain mesh config document, or the `istio` ConfigMap with `data.mesh` as text.

Promises:
- Acts on `outboundTrafficPolicy.mode` (ALLOW_ANY | REGISTRY_ONLY), `connectTimeout` and
  `defaultConfig.holdApplicationUntilProxyStarts`; the access log settings (`accessLogFile`,
  `accessLogEncoding`, `accessLogFormat`) are checked; `defaultHttpRetryPolicy` replaces
  Istio's default retries of routes without their own. A `pathNormalization` other than NONE
  is refused (pysidecar forwards paths as received); `h2UpgradePolicy` (DO_NOT_UPGRADE |
  UPGRADE) is the default of outbound HTTP clusters' upstream protocol. Other MeshConfig fields
  istiod knows are accepted and ignored (they concern the control plane); an unknown field is
  an error.
- Errors inside a ConfigMap's `data.mesh` name the ConfigMap's file and `data.mesh.<inner path>`;
  a YAML syntax error there names the line inside the embedded text.
- `is_mesh_document(value)` tells a kind-less MeshConfig document from an Envoy bootstrap.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from pysidecar.common.access_format import FormatError, formatter
from pysidecar.config.istio.meta import envelope
from pysidecar.config.istio.routes import retry_policy
from pysidecar.config.istio.virtual_service import retries
from pysidecar.config.node import ConfigError, Fields, Node, camel_case
from pysidecar.model import AccessLogConfig, MeshConfig, OutboundTrafficPolicy

log = logging.getLogger(__name__)

# MeshConfig fields we accept without acting on them: they steer istiod, not the data plane.
IGNORED_FIELDS = (
    "default_providers",
    "extension_providers",
    "trust_domain_aliases",
    "enable_prometheus_merge",
    "default_service_export_to",
    "default_virtual_service_export_to",
    "default_destination_rule_export_to",
    "local_ity_lb_setting",
    "locality_lb_setting",
    "dns_refresh_rate",
    "ingress_class",
    "ingress_service",
    "ingress_controller_mode",
    "ingress_selector",
    "protocol_detection_timeout",
    "tcp_keepalive",
    "inbound_cluster_stat_name",
    "outbound_cluster_stat_name",
    "service_settings",
    "config_sources",
    "certificates",
    "ca_certificates",
    "discovery_selectors",
    "mesh_mtls",
    "tls_defaults",
    "enable_envoy_access_log_service",
    "envoy_access_log_service",
    "envoy_metrics_service",
    "verify_certificate_at_client",
    "service_scope_configs",
)

PROXY_CONFIG_FIELDS = (
    "hold_application_until_proxy_starts",
    "config_path",
    "binary_path",
    "service_cluster",
    "drain_duration",
    "discovery_address",
    "stats_udp_address",
    "proxy_admin_port",
    "control_plane_auth_policy",
    "custom_config_file",
    "stat_name_length",
    "concurrency",
    "proxy_bootstrap_template_path",
    "intercept_mode",
    "tracing",
    "envoy_access_log_service",
    "envoy_metrics_service",
    "proxy_metadata",
    "status_port",
    "extra_stat_tags",
    "termination_drain_duration",
    "mesh_id",
    "readiness_probe",
    "proxy_stats_matcher",
    "tracing_service_name",
    "gateway_topology",
    "private_key_provider",
    "image",
    "proxy_headers",
    "file_flush_interval",
    "file_flush_min_size_kb",
    "sds_refresh_interval",
    "ca_certificates_pem",
)

MESH_FIELDS = (
    "outbound_traffic_policy",
    "connect_timeout",
    "default_config",
    "access_log_file",
    "access_log_encoding",
    "access_log_format",
    "h2_upgrade_policy",
    "path_normalization",
    "default_http_retry_policy",
    "enable_tracing",
    "trust_domain",
    "root_namespace",
    "enable_auto_mtls",
    *IGNORED_FIELDS,
)


def _data_plane_fields_not_honoured(f: Fields) -> None:
    """MeshConfig fields that would change what the sidecar does, which pysidecar does not do:
    refused where traffic would differ, warned where only the wire protocol would."""
    if (n := f.get("path_normalization")) is not None:
        kind = n.fields("normalization").opt(
            "normalization",
            lambda k: k.enum(["DEFAULT", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"]),
            "DEFAULT",
        )
        if kind != "NONE":
            n.fail(f"pathNormalization {kind} is not supported by pysidecar: paths are forwarded as received (NONE)")


# MeshConfig's top-level field names, as written (camelCase) or as in the proto (snake_case).
_MESH_KEYS = frozenset(MESH_FIELDS) | {camel_case(n) for n in MESH_FIELDS}


def is_mesh_document(value: Any) -> bool:
    """A kind-less document with a MeshConfig field (rather than an Envoy bootstrap)."""
    if not isinstance(value, dict) or "kind" in value:
        return False
    return bool(set(map(str, value)) & _MESH_KEYS)


def mesh_config(node: Node) -> MeshConfig:
    f = node.fields(*MESH_FIELDS)
    _data_plane_fields_not_honoured(f)
    mode = OutboundTrafficPolicy.ALLOW_ANY
    if (otp := f.get("outbound_traffic_policy")) is not None:
        of = otp.fields("mode", "egress_proxy")
        if (egress := of.get("egress_proxy")) is not None:
            egress.fail("egressProxy is not supported (it needs istiod's alpha egress routing)")
        mode = of.opt(
            "mode",
            lambda n: OutboundTrafficPolicy(n.enum([m.value for m in OutboundTrafficPolicy])),
            OutboundTrafficPolicy.ALLOW_ANY,
        )
    hold = False
    default = MeshConfig()
    sampling, zipkin = default.tracing_sampling, default.zipkin_address
    if (dc := f.get("default_config")) is not None:
        df = dc.fields(*PROXY_CONFIG_FIELDS)
        hold = df.opt("hold_application_until_proxy_starts", Node.boolean, False)
        if (tr := df.get("tracing")) is not None:
            sampling, zipkin = _tracing(tr, sampling, zipkin)
        if (conc := df.get("concurrency")) is not None:
            conc.integer(0)
    encoding = f.opt("access_log_encoding", lambda n: n.enum(["TEXT", "JSON"]), "TEXT")
    log_format = f.opt("access_log_format", Node.string, "")
    try:
        formatter(AccessLogConfig("-", "JSON" if encoding == "JSON" else "TEXT", log_format or None))
    except FormatError as e:
        (f.get("access_log_format") or node).fail(str(e))
    retry = default.default_http_retry_policy
    if (n := f.get("default_http_retry_policy")) is not None:
        # Converted as istiod converts a VirtualService's retries (attempts 0: no retries).
        retry = retry_policy(retries(n))
    return MeshConfig(
        trust_domain=f.opt("trust_domain", Node.string, default.trust_domain),
        root_namespace=f.opt("root_namespace", Node.string, default.root_namespace),
        enable_auto_mtls=f.opt("enable_auto_mtls", Node.boolean, default.enable_auto_mtls),
        default_http_retry_policy=retry,
        outbound_traffic_policy=mode,
        connect_timeout=f.opt("connect_timeout", Node.duration, default.connect_timeout),
        hold_application_until_proxy_starts=hold,
        access_log_file=f.opt("access_log_file", Node.string, ""),
        access_log_encoding=encoding,
        access_log_format=log_format,
        enable_tracing=f.opt("enable_tracing", Node.boolean, True),
        tracing_sampling=sampling,
        zipkin_address=zipkin,
        h2_upgrade=f.opt("h2_upgrade_policy", lambda n: n.enum(["DO_NOT_UPGRADE", "UPGRADE"]), "DO_NOT_UPGRADE")
        == "UPGRADE",
    )


def _tracing(node: Node, sampling: float, zipkin: str) -> tuple[float, str]:
    """defaultConfig.tracing: `sampling` (0..100) and the `zipkin` collector's `address`; other
    tracers (lightstep, datadog, stackdriver, openCensusAgent) are refused."""
    f = node.fields("sampling", "zipkin", "max_path_tag_length", "custom_tags", "tls",
                    "lightstep", "datadog", "stackdriver", "open_census_agent", "tls_settings")  # fmt: skip
    for other in ("lightstep", "datadog", "stackdriver", "open_census_agent"):
        if other in f:
            f.require(other).fail("only the zipkin tracer is supported")
    if (s := f.get("sampling")) is not None:
        v = s.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
            s.fail(f"expected a percentage 0..100, got {v!r}")
        sampling = float(v)
    if (z := f.get("zipkin")) is not None:
        address = z.fields("address").require("address").nonempty()
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            z.fail(f"expected address host:port, got {address!r}")
        zipkin = address
    return sampling, zipkin


def is_istio_configmap(value: Any) -> bool:
    if not isinstance(value, dict) or value.get("kind") != "ConfigMap":
        return False
    md = value.get("metadata") or {}
    name = str(md.get("name", "")) if isinstance(md, dict) else ""
    return name == "istio" or (name.startswith("istio-") and "mesh" in (value.get("data") or {}))


def configmap_mesh(doc: Node) -> MeshConfig:
    """The `istio` ConfigMap: MeshConfig is the YAML text under data.mesh."""
    _meta, top = envelope(doc, "data", "binary_data", "immutable")
    data = top.get("data")
    if data is None or not isinstance(data.value, dict) or "mesh" not in data.value:
        return MeshConfig()
    text_node = data.child("mesh", data.value["mesh"])
    text = text_node.string()
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1} of the embedded YAML)" if mark else ""
        raise ConfigError(doc.file, text_node.path + where, f"invalid YAML: {e}") from e
    return mesh_config(Node(parsed, doc.file, text_node.path))
