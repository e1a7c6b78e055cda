"""The loaded model as Envoy's admin /config_dump JSON (envoy.admin.v3.*ConfigDump messages).

Promises:
- `config_dump(bootstrap, last_updated)` is a pure function returning what Envoy's admin
  prints: `{"configs": [BootstrapConfigDump, ClustersConfigDump, ListenersConfigDump,
  RoutesConfigDump, pysidecar's ReloadConfigDump]}`, each resource under its `@type`, field names snake_case as Envoy's
  admin writes them (proto field names), durations as `"10s"`, enums by name, unset and empty
  fields left out as proto3 JSON leaves them out.
- Listeners and clusters are `static_listeners` / `static_clusters` (they come from a file, not
  xDS); inline route configurations of HTTP connection managers are `static_route_configs`.
  The sidecar's own :15090 / :15021 ports appear as the listeners (and admin cluster) Istio's
  bootstrap has for them, as `pysidecar envoy-config` exports them.
- Every resource is rendered by common/envoy_json.py, the same code `pysidecar envoy-config`
  uses, so the dump shows exactly what real Envoy would be given.
"""

from __future__ import annotations

from typing import Any

from pysidecar.common.access_format import iso_time
from pysidecar.common.envoy_json import (
    admin_port_resources,
    cluster,
    listener,
    route_configuration,
    socket_address,
)
from pysidecar.model import Bootstrap

Json = dict[str, Any]
ADMIN_TYPE = "type.googleapis.com/envoy.admin.v3."
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def route_configs(b: Bootstrap) -> list[Json]:
    """The inline route configurations of every HTTP connection manager, once each."""
    seen: dict[str, Json] = {}
    for x in b.listeners:
        chains = [*x.filter_chains, *([x.default_filter_chain] if x.default_filter_chain else [])]
        for c in chains:
            for f in c.filters:
                rc = getattr(f, "route_config", None)
                if rc is not None:
                    seen.setdefault(rc.name, {"@type": ROUTE_TYPE, **route_configuration(rc)})
    return list(seen.values())


def _inline_routes(x: Json) -> Json:
    """The unnamed inline route config of a :15090 / :15021 listener, as Envoy dumps it."""
    rc = x["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    return {"@type": ROUTE_TYPE, **rc}


def config_dump(b: Bootstrap, last_updated: float, reload: Json | None = None) -> Json:
    """Envoy's dump of `b`; `reload` (config/watch.py's ReloadState.dump) is appended as a
    pysidecar entry: the reload counters and the last rejected config."""
    stamp = iso_time(last_updated)
    own_listeners, own_clusters = admin_port_resources(b)
    listeners = [{"@type": LISTENER_TYPE, **x} for x in [*(listener(x, redact=True) for x in b.listeners), *own_listeners]]
    clusters = [{"@type": CLUSTER_TYPE, **c} for c in [*(cluster(c) for c in b.clusters), *own_clusters]]
    static_resources: Json = {
        "listeners": [{k: v for k, v in x.items() if k != "@type"} for x in listeners],
        "clusters": [{k: v for k, v in c.items() if k != "@type"} for c in clusters],
    }
    boot: Json = {
        "node": {"id": "sidecar~pysidecar", "user_agent_name": "pysidecar"},
        "static_resources": static_resources,
    }
    if b.admin is not None:
        boot["admin"] = {"address": socket_address(b.admin.address)}
    return {
        "configs": [
            {"@type": ADMIN_TYPE + "BootstrapConfigDump", "bootstrap": boot, "last_updated": stamp},
            {
                "@type": ADMIN_TYPE + "ClustersConfigDump",
                "static_clusters": [{"cluster": c, "last_updated": stamp} for c in clusters],
            },
            {
                "@type": ADMIN_TYPE + "ListenersConfigDump",
                "static_listeners": [{"listener": x, "last_updated": stamp} for x in listeners],
            },
            {
                "@type": ADMIN_TYPE + "RoutesConfigDump",
                "static_route_configs": [
                    {"route_config": r, "last_updated": stamp}
                    for r in [*route_configs(b), *(_inline_routes(x) for x in own_listeners)]
                ],
            },
            *([reload] if reload is not None else []),
        ]
    }
