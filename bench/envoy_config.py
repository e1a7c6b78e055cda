"""The one Envoy bootstrap both proxies run in the bench, and the upstreams' configs.

Promises:
- `bootstrap(http=True)` is a single Envoy v3 YAML: a tcp_proxy listener to nginx (TCP
  passthrough), a tcp_proxy listener to the iperf3 server (bulk), and an HTTP connection
  manager listener with a route, request_headers_to_add / response_headers_to_add, stats and an
  access log, routing to nginx. `http=False` is the same file without the HCM listener: used
  for both proxies when pysidecar refuses the full file, so both still run the same config.
- Everything listens on 127.0.0.1 only (traffic stays on loopback).
"""

from __future__ import annotations

from typing import Any

import yaml

NGINX_PORT = 18080
IPERF_PORT = 15201
TCP_PORT = 10080  # tcp_proxy → nginx
HTTP_PORT = 10081  # HTTP connection manager → nginx
BULK_PORT = 10201  # tcp_proxy → iperf3
ADMIN_PORT = 19901

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _tcp_listener(name: str, port: int, cluster: str) -> dict[str, Any]:
    return {
        "name": name,
        "address": _addr(port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": name,
                            "cluster": cluster,
                        },
                    }
                ]
            }
        ],
    }


def _http_listener(access_log: bool = True) -> dict[str, Any]:
    route_config = {
        "name": "bench",
        "virtual_hosts": [
            {
                "name": "bench",
                "domains": ["*"],
                "routes": [
                    {
                        "name": "default",
                        "match": {"prefix": "/"},
                        "route": {"cluster": "nginx", "timeout": "0s"},
                        "request_headers_to_add": [
                            {"header": {"key": "x-bench-request", "value": "1"}}
                        ],
                        "response_headers_to_add": [
                            {"header": {"key": "x-bench-response", "value": "1"}}
                        ],
                    }
                ],
            }
        ],
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": "http_bench",
        "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    if access_log:
        # Istio's sidecars log every request; /dev/null keeps the formatting cost, not the disk.
        hcm["access_log"] = [
            {"name": "envoy.access_loggers.file", "typed_config": {"@type": FILE_LOG, "path": "/dev/null"}}
        ]
    return {
        "name": "http_bench",
        "address": _addr(HTTP_PORT),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }


def bootstrap(http: bool = True, access_log: bool = True) -> str:
    """The bench's one Envoy YAML; `access_log` False drops the HCM's access log (stats stay on),
    for the target that measures what logging costs."""
    listeners = [
        _tcp_listener("tcp_bench", TCP_PORT, "nginx"),
        _tcp_listener("bulk_bench", BULK_PORT, "iperf"),
    ]
    if http:
        listeners.append(_http_listener(access_log))
    doc = {
        "admin": {"address": _addr(ADMIN_PORT)},
        "static_resources": {
            "listeners": listeners,
            "clusters": [_cluster("nginx", NGINX_PORT), _cluster("iperf", IPERF_PORT)],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def nginx_conf(root: str, prefix: str) -> str:
    """One nginx worker serving static files: the upstream is never the bottleneck's cause."""
    return f"""
user root;
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{NGINX_PORT} reuseport backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
"""
