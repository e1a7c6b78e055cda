"""VirtualService / DestinationRule compilation: istiod's names, defaults and refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pysidecar.common.workload import resolve_namespace
from pysidecar.config.istio.routes import short_names
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model import Bootstrap, LbPolicy, TcpProxy
from pysidecar.model.http import HeaderAppendAction, HttpConnectionManager, RouteConfiguration
from tests.unit.test_export import assert_envoy_accepts, needs_envoy

SE = """
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
"""

REVIEWS = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.1.1
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: reviews, namespace: default}
subsets:
- addresses: [{ip: 10.1.0.1}, {ip: 10.1.0.2}]
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, labels: {app: reviews, version: v1}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, labels: {app: reviews, version: v2}}
status: {podIP: 10.1.0.2}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, connectionPool: {tcp: {connectTimeout: 2s}}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def compile_docs(tmp: Path, *docs: str) -> Bootstrap:
    for i, d in enumerate(docs):
        (tmp / f"{i}.yaml").write_text(textwrap.dedent(d))
    return load([str(tmp)])


def route_config(b: Bootstrap, listener: str) -> RouteConfiguration:
    lis = b.listener(listener)
    assert lis is not None
    hcm = lis.filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    return hcm.route_config


def test_service_entry_default_route_and_catch_all(tmp_path: Path) -> None:
    b = compile_docs(tmp_path, SE)
    lis = b.listener("0.0.0.0_80")
    assert lis is not None and not lis.bind_to_port
    http, fallback = lis.filter_chains
    assert http.filter_chain_match.application_protocols == ("http/1.1", "h2c")
    assert isinstance(fallback.filters[0], TcpProxy) and fallback.filters[0].cluster == "PassthroughCluster"
    hcm = http.filters[0]
    assert isinstance(hcm, HttpConnectionManager) and hcm.tracing and hcm.stat_prefix == "outbound_0.0.0.0_80"
    rc = hcm.route_config
    assert rc.name == "80"
    vh, catch_all = rc.virtual_hosts
    assert vh.name == "httpbin.org:80" and vh.domains == ("httpbin.org", "httpbin.org:80")
    (r,) = vh.routes
    assert r.name == "default" and r.decorator is not None and r.decorator.operation == "httpbin.org:80/*"
    assert r.route is not None and r.route.cluster == "outbound|80||httpbin.org" and r.route.timeout == 0.0
    assert r.route.retry_policy is not None and r.route.retry_policy.num_retries == 2
    assert "retriable-status-codes" in r.route.retry_policy.retry_on
    assert catch_all.name == "allow_any" and catch_all.domains == ("*",)
    assert catch_all.routes[0].route is not None and catch_all.routes[0].route.cluster == "PassthroughCluster"


def test_registry_only_block_all(tmp_path: Path) -> None:
    b = compile_docs(tmp_path, SE, "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n")
    block = route_config(b, "0.0.0.0_80").virtual_hosts[-1]
    assert block.name == "block_all"
    direct = block.routes[0].direct_response
    assert direct is not None and direct.status == 502 and direct.body == ""


def test_virtual_service_routes(tmp_path: Path) -> None:
    vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: httpbin-ext}
    spec:
      hosts: [httpbin.org]
      http:
      - name: api
        match:
        - {name: exact, uri: {exact: /status/418}, headers: {x-user: {prefix: jo}}, queryParams: {debug: {}}}
        - {uri: {regex: "/delay/[0-9]+"}, method: {exact: GET}}
        fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
        headers:
          request: {set: {x-a: "1", host: rewritten.example}, add: {x-b: "2"}, remove: [x-c]}
        route: [{destination: {host: httpbin.org}}]
      - match: [{uri: {prefix: /old}}]
        redirect: {uri: /new, redirectCode: 302}
      - match: [{uri: {prefix: /teapot}}]
        directResponse: {status: 418, body: {string: short and stout}}
      - timeout: 3s
        retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,503"}
        rewrite: {uri: /anything}
        route: [{destination: {host: httpbin.org}, weight: 90}, {destination: {host: httpbin.org, port: {number: 8080}}, weight: 10}]
      - route: [{destination: {host: never.example}}]
    """
    vh = route_config(compile_docs(tmp_path, SE, vs), "0.0.0.0_80").virtual_hosts[0]
    names = [r.name for r in vh.routes]
    assert names == ["api.exact", "api", "", "", ""]  # the catch-all stops the list
    first = vh.routes[0]
    assert first.match.path == "/status/418"
    assert [h.name for h in first.match.headers] == ["x-user"]
    assert first.match.query_parameters[0].present_match is True
    assert first.fault is not None and first.fault.abort_status == 503 and first.fault.abort_percent == 50
    adds = first.mutations.request_headers_to_add
    assert [(h.key, h.append_action) for h in adds] == [
        ("x-a", HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-b", HeaderAppendAction.APPEND_IF_EXISTS_OR_ADD),
    ]
    assert first.route is not None and first.route.host_rewrite_literal == "rewritten.example"
    assert first.decorator is not None and first.decorator.operation == "httpbin.org:80/status/418"
    second = vh.routes[1]
    assert second.match.safe_regex == "/delay/[0-9]+" and second.match.headers[-1].name == ":method"
    assert vh.routes[2].redirect is not None and vh.routes[2].redirect.response_code == 302
    direct = vh.routes[3].direct_response
    assert direct is not None and (direct.status, direct.body) == (418, "short and stout")
    assert vh.routes[3].decorator is not None and vh.routes[3].decorator.operation == "httpbin-ext:80/teapot*"
    last = vh.routes[4].route
    assert last is not None and last.timeout == 3.0 and last.prefix_rewrite == "/anything"
    assert [(w.name, w.weight) for w in last.weighted_clusters] == [
        ("outbound|80||httpbin.org", 90),
        ("outbound|8080||httpbin.org", 10),
    ]
    rp = last.retry_policy
    assert rp is not None and rp.num_retries == 3 and rp.per_try_timeout == 1.0
    assert rp.retry_on == ("5xx", "retriable-status-codes") and rp.retriable_status_codes == (503,)


def test_retries_attempts_zero_disables(tmp_path: Path) -> None:
    vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: v}
    spec:
      hosts: [httpbin.org]
      http: [{retries: {attempts: 0}, route: [{destination: {host: httpbin.org}}]}]
    """
    r = route_config(compile_docs(tmp_path, SE, vs), "0.0.0.0_80").virtual_hosts[0].routes[0]
    assert r.route is not None and r.route.retry_policy is None


def test_subsets_and_traffic_policy(tmp_path: Path) -> None:
    vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http: [{route: [{destination: {host: reviews, subset: v2}}]}]
    """
    b = compile_docs(tmp_path, REVIEWS, vs)
    v2 = b.cluster("outbound|9080|v2|reviews.default.svc.cluster.local")
    assert v2 is not None and [e.address.address for e in v2.endpoints] == ["10.1.0.2"]
    assert v2.lb_policy is LbPolicy.ROUND_ROBIN and v2.connect_timeout == 2.0
    vh = route_config(b, "0.0.0.0_9080").virtual_hosts[0]
    assert vh.name == "reviews.default.svc.cluster.local:9080"
    assert "reviews" in vh.domains and "10.96.1.1:9080" in vh.domains
    assert vh.routes[0].route is not None
    assert vh.routes[0].route.cluster == "outbound|9080|v2|reviews.default.svc.cluster.local"


@pytest.mark.parametrize(
    ("route", "path", "words"),
    [
        ("[{destination: {host: reviews, subset: v3}}]", "spec.http[0].route[0].destination.subset", "unknown subset 'v3'"),
        ("[{destination: {host: reviews}, weight: -5}]", "spec.http[0].route[0].weight", "must not be negative"),
    ],
)
def test_refused_with_resource_and_field(tmp_path: Path, route: str, path: str, words: str) -> None:
    vs = f"""
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: reviews, namespace: default}}
    spec:
      hosts: [reviews]
      http: [{{route: {route}}}]
    """
    with pytest.raises(ConfigError) as e:
        compile_docs(tmp_path, REVIEWS, vs)
    assert e.value.path == path
    assert e.value.message.startswith("VirtualService default/reviews: ") and words in e.value.message
    assert e.value.file.endswith("1.yaml")


# "/a[(" is refused by any engine; the others compile in Python's re but not in RE2, the
# dialect istiod validates and Envoy runs.
@pytest.mark.parametrize(
    ("where", "pattern", "words"),
    [
        ("uri", "/a[(", "missing ]"),
        ("uri", "/(a)\\1", "invalid escape sequence"),
        ("uri", "/(?=api)a.*", "invalid perl operator: (?="),
        ("headers", "(?<!x)y", "invalid perl operator: (?<"),
        ("queryParams", "a++", "bad repetition operator"),
        ("uri", "/a{1001}", "invalid repetition size"),
    ],
)
def test_regex_refused_as_re2_refuses_it(tmp_path: Path, where: str, pattern: str, words: str) -> None:
    q = json.dumps(pattern)  # a YAML double-quoted string
    match = f"uri: {{regex: {q}}}" if where == "uri" else f"{where}: {{k: {{regex: {q}}}}}"
    vs = f"""
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {{name: bad}}
    spec:
      hosts: [httpbin.org]
      http: [{{match: [{{{match}}}], route: [{{destination: {{host: httpbin.org}}}}]}}]
    """
    with pytest.raises(ConfigError) as e:
        compile_docs(tmp_path, SE, vs)
    assert e.value.file.endswith("1.yaml")
    assert e.value.path == "spec.http[0].match[0]." + ("uri.regex" if where == "uri" else f"{where}.k.regex")
    assert "VirtualService default/bad" in e.value.message and "invalid regex" in e.value.message
    assert words in e.value.message and "RE2" in e.value.message


def test_uri_regex_rewrite_checked_as_re2(tmp_path: Path) -> None:
    vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: bad}
    spec:
      hosts: [httpbin.org]
      http: [{rewrite: {uriRegexRewrite: {match: "^/(?P<x>a)(?P=x)", rewrite: /b}}, route: [{destination: {host: httpbin.org}}]}]
    """
    with pytest.raises(ConfigError) as e:
        compile_docs(tmp_path, SE, vs)
    assert e.value.path == "spec.http[0].rewrite.uriRegexRewrite.match"
    assert "invalid regex" in e.value.message


TLS_SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls}
spec:
  hosts: [a.example, b.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
"""


def test_tcp_and_tls_routes(tmp_path: Path) -> None:
    se = """
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: db}
    spec:
      hosts: [db.example]
      addresses: [198.18.9.9]
      ports: [{number: 5432, name: tcp, protocol: TCP}]
      resolution: DNS
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: routes}
    spec:
      hosts: [a.example, db.example]
      tls: [{match: [{sniHosts: [a.example], port: 443}], route: [{destination: {host: b.example}}]}]
      tcp: [{route: [{destination: {host: db.example, port: {number: 5432}}, weight: 70}, {destination: {host: b.example, port: {number: 443}}, weight: 30}]}]
    """
    b = compile_docs(tmp_path, TLS_SE, se)
    tls = b.listener("0.0.0.0_443")
    assert tls is not None
    by_sni = {c.filter_chain_match.server_names: c.filters[0] for c in tls.filter_chains}
    a = by_sni[("a.example",)]
    assert isinstance(a, TcpProxy) and a.cluster == "outbound|443||b.example"
    db = b.listener("198.18.9.9_5432")
    assert db is not None
    proxy = db.filter_chains[0].filters[0]
    assert isinstance(proxy, TcpProxy) and [w.weight for w in proxy.weighted_clusters] == [70, 30]


TLS_TWO_HOSTS = TLS_SE + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tls}
spec:
  hosts: [a.example, b.example]
  tls: [{match: [{sniHosts: [a.example]}], route: [{destination: {host: a.example, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: a.example
  subsets: [{name: v1, labels: {v: "1"}}]
"""


def _chains(b: Bootstrap, name: str) -> list[tuple[tuple[str, ...], tuple[str, ...], str]]:
    lis = b.listener(name)
    assert lis is not None
    out = []
    for c in lis.filter_chains:
        proxy = c.filters[0]
        assert isinstance(proxy, TcpProxy)
        m = c.filter_chain_match
        out.append((tuple(map(str, m.prefix_ranges)), m.server_names, proxy.cluster))
    return out


def _tls_chains(b: Bootstrap) -> dict[tuple[str, ...], str]:
    sni = [(names, cluster) for _, names, cluster in _chains(b, "0.0.0.0_443")[:-1]]
    assert len({names for names, _ in sni}) == len(sni), "two chains with the same server_names"
    return dict(sni)


def test_tls_route_of_a_multi_host_virtual_service_once_per_port(tmp_path: Path) -> None:
    # The VirtualService covers both hosts: its tls route is one chain, and b.example, which no
    # route names by SNI, keeps its default chain.
    assert _tls_chains(compile_docs(tmp_path, TLS_TWO_HOSTS)) == {
        ("a.example",): "outbound|443|v1|a.example",
        ("b.example",): "outbound|443||b.example",
    }


def test_same_sni_from_two_virtual_services_keeps_the_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: tls-2}
    spec:
      hosts: [a.example]
      tls: [{match: [{sniHosts: [a.example]}], route: [{destination: {host: b.example}}]}]
    """
    chains = _tls_chains(compile_docs(tmp_path, TLS_TWO_HOSTS, other))
    assert chains[("a.example",)] == "outbound|443|v1|a.example"
    assert "a.example already routed by VirtualService default/tls; ignored" in caplog.text


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_tls_routes_of_a_multi_host_virtual_service(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    assert_envoy_accepts(tmp_path, compile_docs(tmp_path / "cfg", TLS_TWO_HOSTS))


SUBNETS = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example, cache.example]
  addresses: [198.18.9.9]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.example]
  ports: [{number: 7000, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.example, legacy.example, a.example]
  tcp:
  - match: [{destinationSubnets: [198.18.9.0/24], sourceLabels: {app: x}}]
    route: [{destination: {host: cache.example, port: {number: 5432}}}]
  - match: [{port: 7000, destinationSubnets: [10.1.0.0/16, 10.2.0.1]}]
    route: [{destination: {host: db.example, port: {number: 5432}}}]
  - route: [{destination: {host: db.example, port: {number: 5432}}}]
  tls:
  - match: [{sniHosts: [a.example], destinationSubnets: [203.0.113.0/24]}]
    route: [{destination: {host: b.example}}]
"""


def test_l4_destination_subnets_become_prefix_ranges(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    b = compile_docs(tmp_path, TLS_SE, SUBNETS)
    # The VIP listener: the subnet route first (by prefix_ranges), then the route for any address.
    assert _chains(b, "198.18.9.9_5432") == [
        (("198.18.9.0/24",), (), "outbound|5432||cache.example"),
        ((), (), "outbound|5432||db.example"),
    ]
    # No VIP: the port-7000 match applies on 7000 only; its subnets are chains on the wildcard listener.
    assert _chains(b, "0.0.0.0_7000") == [
        (("198.18.9.0/24",), (), "outbound|5432||cache.example"),
        (("10.1.0.0/16", "10.2.0.1/32"), (), "outbound|5432||db.example"),
        ((), (), "outbound|5432||db.example"),
    ]
    tls = _chains(b, "0.0.0.0_443")
    assert (("203.0.113.0/24",), ("a.example",), "outbound|443||b.example") in tls
    assert ((), ("a.example",), "outbound|443||a.example") in tls  # a.example outside the subnet
    assert "spec.tcp[0].match[0].sourceLabels: match by source is ignored" in caplog.text


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_destination_subnet_chains(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    assert_envoy_accepts(tmp_path, compile_docs(tmp_path / "cfg", TLS_SE, SUBNETS))


def test_bad_destination_subnet_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        compile_docs(tmp_path, TLS_SE, SUBNETS.replace("10.1.0.0/16", "10.1.0.0/99"))
    assert e.value.path == "spec.tcp[1].match[0].destinationSubnets[0]" and "10.1.0.0/99" in e.value.message


def test_short_names_follow_the_proxy_namespace() -> None:
    host = "reviews.shop.svc.cluster.local"
    assert short_names(host, "shop") == ["reviews", "reviews.shop", "reviews.shop.svc"]
    assert short_names(host, "default") == ["reviews.shop", "reviews.shop.svc"]
    for not_kube in ("httpbin.org", "a.b.shop.svc.cluster.local", "reviews.shop.svc.other.domain"):
        assert short_names(not_kube, "shop") == []
    assert resolve_namespace("flag", {"POD_NAMESPACE": "env"}) == "flag"
    assert resolve_namespace(None, {"POD_NAMESPACE": "env"}) == "env"
    assert resolve_namespace(None, {}) == "default"


def test_envoy_config_takes_the_namespace_from_pod_namespace_or_the_flag(tmp_path: Path) -> None:
    (tmp_path / "se.yaml").write_text(textwrap.dedent(REVIEWS).replace("namespace: default", "namespace: shop"))

    def domains(*flags: str, env: dict[str, str]) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-m", "pysidecar", "envoy-config", "-c", str(tmp_path / "se.yaml"), *flags],
            capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin", **env},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        lis = {x["name"]: x for x in yaml.safe_load(r.stdout)["static_resources"]["listeners"]}
        hcm = lis["0.0.0.0_9080"]["filter_chains"][0]["filters"][0]["typed_config"]
        return list(hcm["route_config"]["virtual_hosts"][0]["domains"])

    assert "reviews:9080" in domains(env={"POD_NAMESPACE": "shop"})
    assert "reviews:9080" in domains("--namespace", "shop", env={"POD_NAMESPACE": "other"})
    assert "reviews:9080" not in domains(env={})


def test_sidecar_egress_hosts_and_policy(tmp_path: Path) -> None:
    sc = """
    apiVersion: networking.istio.io/v1
    kind: Sidecar
    metadata: {name: default, namespace: default}
    spec:
      egress: [{hosts: ["./*"]}]
      outboundTrafficPolicy: {mode: REGISTRY_ONLY}
    """
    other = SE.replace("name: httpbin-ext}", "name: other, namespace: elsewhere}").replace("httpbin.org", "other.org")
    b = compile_docs(tmp_path, SE, other, sc)
    assert b.cluster("outbound|80||httpbin.org") is not None
    assert b.cluster("outbound|80||other.org") is None
    assert route_config(b, "0.0.0.0_80").virtual_hosts[-1].name == "block_all"
