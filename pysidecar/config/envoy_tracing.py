"""The HTTP connection manager's `tracing` in Envoy YAML: sampling, custom tags, the zipkin provider.

Promises:
- `tracing(node)` takes `client_sampling` / `random_sampling` / `overall_sampling` (Percent:
  `{value: N}`, 0..100), `custom_tags` with `literal` values (the kinds read from requests,
  environment or metadata are refused: pysidecar cannot fill them), `max_path_tag_length`,
  `verbose` (accepted: no stream-event logs are written), and `provider` `envoy.tracers.zipkin`
  (ZipkinConfig: `collector_cluster`, `collector_endpoint`, `collector_endpoint_version`
  HTTP_JSON only, `trace_id_128bit`, `shared_span_context`, `collector_hostname`).
  Any other provider, `spawn_upstream_span: true`, `operation` / `upstream_operation` and
  `no_context_propagation` are refused with the YAML path.
"""

from __future__ import annotations

from pysidecar.config.node import Node
from pysidecar.model.http import Tracing, ZipkinProvider

ZIPKIN_TYPE = "envoy.config.trace.v3.ZipkinConfig"


def percent(node: Node) -> float:
    """envoy.type.v3.Percent: `{value: N}` with 0 <= N <= 100."""
    v = node.fields("value").require("value").value
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 100:
        node.fail(f"expected a percentage {{value: 0..100}}, got {v!r}")
    return float(v)


def zipkin(node: Node) -> ZipkinProvider:
    f = node.fields("name", "typed_config")
    tc = f.require("typed_config")
    if tc.type_url() != ZIPKIN_TYPE:
        tc.fail(f"unsupported tracing provider {tc.type_url()!r}; supported: {ZIPKIN_TYPE}")
    z = tc.fields(
        "@type", "collector_cluster", "collector_endpoint", "collector_endpoint_version", "trace_id_128bit",
        "shared_span_context", "collector_hostname",
    )  # fmt: skip
    if (v := z.get("collector_endpoint_version")) is not None:
        v.enum(["HTTP_JSON"])
    return ZipkinProvider(
        collector_cluster=z.require("collector_cluster").nonempty(),
        collector_endpoint=z.require("collector_endpoint").nonempty(),
        trace_id_128bit=z.opt("trace_id_128bit", Node.boolean, False),
        shared_span_context=z.opt("shared_span_context", Node.boolean, True),
        collector_hostname=z.opt("collector_hostname", Node.string, ""),
    )


def _custom_tag(node: Node) -> tuple[str, str]:
    f = node.fields("tag", "literal", "environment", "request_header", "metadata", "value")
    tag = f.require("tag").nonempty()
    if "literal" not in f:
        node.fail("only literal custom tags are supported")
    return tag, f.require("literal").fields("value").require("value").string()


def tracing(node: Node) -> Tracing:
    f = node.fields(
        "client_sampling", "random_sampling", "overall_sampling", "custom_tags", "provider",
        "max_path_tag_length", "verbose", "spawn_upstream_span", "operation", "upstream_operation",
        "no_context_propagation",
    )  # fmt: skip
    if f.opt("spawn_upstream_span", Node.boolean, False):
        f.require("spawn_upstream_span").fail("spawn_upstream_span: true is not supported")
    for unsupported in ("operation", "upstream_operation"):
        if (n := f.get(unsupported)) is not None and n.string():
            n.fail(f"tracing {unsupported} is not supported (span names come from route decorators)")
    if f.opt("no_context_propagation", Node.boolean, False):
        f.require("no_context_propagation").fail("no_context_propagation: true is not supported")
    f.opt("verbose", Node.boolean, False)
    return Tracing(
        client_sampling=f.opt("client_sampling", percent, 100.0),
        random_sampling=f.opt("random_sampling", percent, 100.0),
        overall_sampling=f.opt("overall_sampling", percent, 100.0),
        custom_tags=tuple(_custom_tag(n) for n in f.list("custom_tags")),
        max_path_tag_length=f.opt("max_path_tag_length", lambda n: n.integer(0), 256),
        provider=f.opt("provider", zipkin, None),
    )
