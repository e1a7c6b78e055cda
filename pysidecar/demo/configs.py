"""The YAML the demo feeds the sidecar: the seed tutorials' own resources, with lab names.

Istio resources go into the client's `-c` directory one file each, the way a ConfigMap volume
would hold them, so adding or rewriting a file is a hot reload (no restart). The seed-002
inbound config is an Envoy v3 bootstrap for the second proxy (pod `myapp`).

Every address here is a lab address (198.18.0.0/15) or loopback; the host names resolve only
inside the lab's /etc/netns hosts files.
"""

from __future__ import annotations

# Seed 000: `kubectl get configmap istio -n istio-system -o yaml | sed 's/mode: .../'`. The
# sidecar reads the same ConfigMap shape.
MESH = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    outboundTrafficPolicy:
      mode: {mode}
"""
# The demo profile's tracing: 100 % sampling (seed 000's `X-B3-Sampled: 1`) to a zipkin collector.
MESH_TRACING = """\
    defaultConfig:
      tracing:
        sampling: 100
        zipkin: {address: "{zipkin}"}
"""

# The seed deploys samples/sleep: its Service (port 80, `http`) is what gives every sidecar in
# the mesh an HTTP listener 0.0.0.0_80, and with it the `block_all` 502 under REGISTRY_ONLY
# (without any HTTP service on port 80, Istio's sidecar just closes the connection).
SLEEP_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: sleep
  labels: {app: sleep, service: sleep}
spec:
  clusterIP: 198.19.255.20
  ports:
  - port: 80
    name: http
  selector: {app: sleep}
"""

# Seed 000, "配置ServiceEntry---访问一个外部的HTTP服务", verbatim.
SE_HTTPBIN = """\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
"""

# Seed 000, "管理到外部服务的流量": a 3 s timeout for httpbin.org, verbatim.
VS_HTTPBIN_TIMEOUT = """\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
    - httpbin.org
  http:
  - timeout: 3s
    route:
      - destination:
          host: httpbin.org
        weight: 100
"""

# Seed 002's 6:4 split (nginx v1 / v2 behind one name) in Istio's terms: one ServiceEntry with
# an endpoint per version, a DestinationRule naming the subsets, a VirtualService weighting them.
MYNGX_SPLIT = """\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: myngx
spec:
  hosts:
  - myngx.example
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  location: MESH_EXTERNAL
  endpoints:
  - address: {v1}
    labels: {{version: v1}}
  - address: {v2}
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: myngx
spec:
  host: myngx.example
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: myngx
spec:
  hosts:
  - myngx.example
  http:
  - route:
    - destination: {{host: myngx.example, subset: v2}}
      weight: 60
    - destination: {{host: myngx.example, subset: v1}}
      weight: 40
"""

# Seed 002, chapter 4 "入口流量拦截": the pod's Envoy takes what PREROUTING redirected to 15006,
# adds `myname: chengzw` to every response (route-level response_headers_to_add, as in the
# seed's network-filter example) and hands the request to the app on 127.0.0.1:80.
INBOUND_ENVOY = """\
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
  - name: inbound_15006
    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}
    traffic_direction: INBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_http
          codec_type: AUTO
          route_config:
            name: myapp
            response_headers_to_add:
            - header: {key: myname, value: chengzw}
            virtual_hosts:
            - name: myapp
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: myapp_local}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: myapp_local
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: myapp_local
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 80}}}}]}]
"""

# Seed 002's one inbound rule (the pod has no outbound interception at all).
INBOUND_RULE = [
    "iptables", "-t", "nat", "-A", "PREROUTING", "!", "-d", "127.0.0.1/32",
    "-p", "tcp", "--dport", "80", "-j", "REDIRECT", "--to-ports", "15006",
]  # fmt: skip


# Seed 001 (ingress). istio-ingressgateway's Service: 80 → 8080, 443 → 8443, so the gateway's
# listeners are 0.0.0.0_8080 / 0.0.0.0_8443 (the seed's INGRESS_PORT / SECURE_INGRESS_PORT).
INGRESS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  clusterIP: 198.18.200.1
  selector: {istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
"""

# "使用istio网关配置ingress": the Gateway (host __HOST__) and the VirtualService sending /status
# and /delay to httpbin:8000 (bound to the Gateways __GW__), the seed's with placeholders.
GATEWAY_HTTP = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["__HOST__"]
"""
VS_HTTPBIN = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: ["__HOST__"]
  gateways: [__GW__]
  http:
  - match:
    - uri: {prefix: /status}
    - uri: {prefix: /delay}
    route:
    - destination:
        port: {number: 8000}
        host: httpbin
"""

# "安全网关": HTTPS servers with tls mode __MODE__, one credential per host, chosen by SNI.
GATEWAY_TLS = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https-httpbin, protocol: HTTPS}
    tls: {mode: __MODE__, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
  - port: {number: 443, name: https-helloworld, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: helloworld-credential}
    hosts: [helloworld-v1.example.com]
"""
VS_HELLOWORLD = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: helloworld-v1
spec:
  hosts: [helloworld-v1.example.com]
  gateways: [mygateway]
  http:
  - match:
    - uri: {exact: /hello}
    route:
    - destination:
        host: helloworld-v1
        port: {number: 5000}
"""


# Seed 000, "配置egree网关": the egress gateway's Gateway, the VirtualService that sends the
# mesh's httpbin.org traffic to the gateway and the gateway's on to httpbin.org (routes chosen
# per match by `gateways`), and the DestinationRule naming subset `httpbin`. Verbatim (the seed
# shows the DestinationRule twice; once is enough).
EGRESS_GATEWAY_SEED = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: httpbin-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - "httpbin.org"
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: vs-for-egressgateway
spec:
  hosts:
  - httpbin.org
  gateways:
  - httpbin-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: httpbin
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - httpbin-egressgateway
      port: 80
    route:
    - destination:
        host: httpbin.org
        port:
          number: 80
      weight: 100
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: dr-for-egressgateway
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: httpbin
"""

# What the seed's cluster already has: istio-egressgateway's Service (ports as Istio's chart
# gives it: 80 → 8080, 443 → 8443) selecting the gateway pod, and its EndpointSlice, the pod's
# lab address. The seed's ServiceEntry for httpbin.org (SE_HTTPBIN) goes with it.
EGRESS_GATEWAY_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: istio-egressgateway
  namespace: istio-system
  labels: {app: istio-egressgateway, istio: egressgateway}
spec:
  clusterIP: 198.19.254.10
  selector: {istio: egressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: istio-egressgateway-abcde
  namespace: istio-system
  labels: {kubernetes.io/service-name: istio-egressgateway}
addressType: IPv4
endpoints:
- addresses: [{gateway_ip}]
  conditions: {ready: true}
ports:
- {name: http2, port: 8080, protocol: TCP}
- {name: https, port: 8443, protocol: TCP}
"""
# The gateway pod's labels (`pysidecar run --mode router --workload-labels istio=egressgateway`).
EGRESS_GATEWAY_LABELS = {"istio": "egressgateway"}


def egress_gateway_service(gateway_ip: str) -> str:
    return EGRESS_GATEWAY_SERVICE.replace("{gateway_ip}", gateway_ip)


# Seed 001's backends, `kubectl apply -f samples/httpbin/httpbin.yaml` and helloworld-v1: their
# Services and Endpoints (the lab pods' addresses), as the ingress gateway sees them. helloworld-v1
# is the seed's Service as written, without a clusterIP: load-balanced, not headless.
INGRESS_BACKENDS = """\
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  clusterIP: 198.19.250.1
  ports: [{name: http, port: 8000, targetPort: 80}]
  selector: {app: httpbin}
---
apiVersion: v1
kind: Endpoints
metadata: {name: httpbin}
subsets: [{addresses: [{ip: __HTTPBIN__}], ports: [{name: http, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: helloworld-v1
  labels:
    app: helloworld-v1
spec:
  ports:
  - name: http
    port: 5000
  selector:
    app: helloworld-v1
---
apiVersion: v1
kind: Endpoints
metadata: {name: helloworld-v1}
subsets: [{addresses: [{ip: __HELLO__}], ports: [{name: http, port: 5000}]}]
"""
# What seed 001's helloworld-v1 answers on /hello.
HELLO = "Hello version: v1, instance: helloworld-v1-5dfcf5d5cd-2l44c\n"


def mesh(mode: str, access_log_file: str | None = None, zipkin: str | None = None) -> str:
    """The mesh ConfigMap; `access_log_file`: Istio's access log (its default TEXT format);
    `zipkin` (host:port): the demo profile's tracing reporting there."""
    text = MESH.replace("{mode}", mode)
    if zipkin is not None:
        text += MESH_TRACING.replace("{zipkin}", zipkin)
    return f"{text}    accessLogFile: {access_log_file}\n" if access_log_file else text


def myngx_split(v1: str, v2: str) -> str:
    return MYNGX_SPLIT.format(v1=v1, v2=v2)


def ingress_backends(httpbin: str, helloworld: str) -> str:
    return INGRESS_BACKENDS.replace("__HTTPBIN__", httpbin).replace("__HELLO__", helloworld)
