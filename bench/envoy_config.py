"""The one Envoy bootstrap both proxies run in the bench, and the upstreams' configs.

Promises:
- `bootstrap(http=True)` is a single Envoy v3 YAML: a tcp_proxy listener to nginx (TCP
  passthrough), a tcp_proxy listener to the iperf3 server (bulk), and an HTTP connection
  manager listener with a route, request_headers_to_add / response_headers_to_add, stats and an
  access log, routing to nginx. `http=False` is the same file without the HCM listener: used
  for both proxies when pysidecar refuses the full file, so both still run the same config.
- An HTTP/2 listener (`H2_PORT`, h2c with prior knowledge) with HTTP/2 clusters on the other
  side: `/lab.Echo/*` to the grpcio server of tests/grpc_app.py (the gRPC unary scenario),
  everything else to nginx's h2c-only server (`NGINX_H2C_PORT`, the same files).
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
H2_PORT = 10082  # HTTP/2 both sides: HCM → nginx h2c / the gRPC server
NGINX_H2C_PORT = 18081
GRPC_PORT = 18090
ADMIN_PORT = 19901

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


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


def _cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }
    if http2:
        out["typed_extension_protocol_options"] = {
            HTTP_OPTIONS: {"@type": "type.googleapis.com/" + HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}
        }
    return out


def _h2_listener() -> dict[str, Any]:
    """HTTP/2 on both sides, no access log: the codecs' cost, not the log's."""
    routes = [
        {"match": {"prefix": "/lab.Echo/"}, "route": {"cluster": "grpc", "timeout": "0s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "nginx_h2c", "timeout": "0s"}},
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "h2_bench",
        "codec_type": "AUTO",
        "route_config": {"name": "h2", "virtual_hosts": [{"name": "h2", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
    return {"name": "h2_bench", "address": _addr(H2_PORT), "filter_chains": [chain]}


def bootstrap(http: bool = True, access_log: bool = True) -> str:
    """The bench's one Envoy YAML; `access_log` False drops the HCM's access log (stats stay on),
    for the target that measures what logging costs."""
    listeners = [
        _tcp_listener("tcp_bench", TCP_PORT, "nginx"),
        _tcp_listener("bulk_bench", BULK_PORT, "iperf"),
    ]
    clusters = [_cluster("nginx", NGINX_PORT), _cluster("iperf", IPERF_PORT)]
    if http:
        listeners += [_http_listener(access_log), _h2_listener()]
        clusters += [_cluster("nginx_h2c", NGINX_H2C_PORT, True), _cluster("grpc", GRPC_PORT, True)]
    doc = {
        "admin": {"address": _addr(ADMIN_PORT)},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters,
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
    server {{
        listen 127.0.0.1:{NGINX_H2C_PORT} http2 backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
"""
