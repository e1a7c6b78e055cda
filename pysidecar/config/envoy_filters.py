"""The network filters pysidecar runs, as one explicit table from Envoy's filter type to its
parser (Envoy's filter factory registry, without registration on import).

Promises:
- `NETWORK_FILTERS` maps each supported `typed_config` `@type` to its parser;
  `NETWORK_FILTER_NAMES` the well-known names that stand for a type without typed_config.
- `network_filter(node)` parses one filter, or a ConfigError naming the YAML path and the
  supported types.
- `BOOTSTRAP_CHECKS` are the checks across a whole bootstrap that a filter needs (an inline
  route_config's clusters exist), run by `envoy.bootstrap` and the loader (after xDS files) once the bootstrap is built.
"""

from __future__ import annotations

from collections.abc import Callable

from pysidecar.config.envoy_hcm import HCM_TYPE, check_route_clusters, http_connection_manager
from pysidecar.config.envoy_tcp_proxy import TCP_PROXY_TYPE, tcp_proxy
from pysidecar.config.node import Node
from pysidecar.config.typed_config import filter_type
from pysidecar.model import Bootstrap, NetworkFilter

NETWORK_FILTERS: dict[str, Callable[[Node], NetworkFilter]] = {
    TCP_PROXY_TYPE: tcp_proxy,
    HCM_TYPE: http_connection_manager,
}
NETWORK_FILTER_NAMES: dict[str, str] = {
    "envoy.filters.network.tcp_proxy": TCP_PROXY_TYPE,
    "envoy.tcp_proxy": TCP_PROXY_TYPE,
    "envoy.filters.network.http_connection_manager": HCM_TYPE,
    "envoy.http_connection_manager": HCM_TYPE,
}
BOOTSTRAP_CHECKS: tuple[Callable[[Bootstrap, Node], None], ...] = (check_route_clusters,)


def network_filter(node: Node) -> NetworkFilter:
    type_name, config = filter_type(node, NETWORK_FILTER_NAMES)
    parser = NETWORK_FILTERS.get(type_name)
    if parser is None:
        node.fail(
            f"unsupported network filter type {type_name!r}; supported: "
            + ", ".join(sorted(NETWORK_FILTERS))
        )
    return parser(config)
