"""Which filter an Envoy filter node configures: its `typed_config` `@type`, or a well-known
filter name standing for one (Envoy's `envoy.tcp_proxy`-style names).

Promises: `filter_type(node, known_names)` returns (type URL, the typed_config node), or a
ConfigError naming the YAML path when neither says.
"""

from __future__ import annotations

from pysidecar.config.node import Node


def filter_type(f_node: Node, known_names: dict[str, str]) -> tuple[str, Node]:
    """A filter's type URL: from its typed_config, else from a well-known filter name."""
    f = f_node.fields("name", "typed_config")
    name = f.require("name").nonempty()
    tc = f.get("typed_config")
    if tc is not None:
        return tc.type_url(), tc
    if name in known_names:
        return known_names[name], f_node.child("typed_config", {})
    f_node.fail(f"filter {name!r} has no typed_config and its name is not a known filter")
