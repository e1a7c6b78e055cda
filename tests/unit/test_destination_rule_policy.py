"""DestinationRule and mesh fields past the circuit breakers: the upstream HTTP options
(idleTimeout, maxRequestsPerConnection) compiled, exported and honoured by the pool, the panic
threshold, deprecated consecutiveErrors, retries.backoff, and what is refused or warned about."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pysidecar.config.envoy import load_file
from pysidecar.config.export import to_envoy
from pysidecar.config.loader import load
from pysidecar.config.node import ConfigError
from pysidecar.model import DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT, Bootstrap, CircuitBreakers, Cluster
from pysidecar.model.http import ISTIO_DEFAULT_RETRY, HttpConnectionManager, RetryPolicy
from pysidecar.proxy.http.http1.client_codec import UpstreamConnection
from tests.unit.test_circuit_breaker import ISTIO, FakeStream, _pool
from tests.unit.test_export import assert_envoy_accepts, needs_envoy


def _dr(traffic_policy: dict[str, Any], **spec: Any) -> str:
    """A DestinationRule for backend.lab with this trafficPolicy."""
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "backend"},
        "spec": {"host": "backend.lab", "trafficPolicy": traffic_policy, **spec},
    }
    return yaml.safe_dump(doc)


POLICY = _dr(
    {
        "connectionPool": {
            "tcp": {"maxConnectionDuration": "1h"},
            "http": {"idleTimeout": "30s", "maxRequestsPerConnection": 2},
        },
        "outlierDetection": {"consecutiveErrors": 3, "minHealthPercent": 40},
    },
    subsets=[{"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {"connectionPool": {"http": {"idleTimeout": "0s"}}}}],
) + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend}
spec:
  hosts: [backend.lab]
  http: [{retries: {attempts: 3, backoff: 100ms}, route: [{destination: {host: backend.lab}}]}]
"""


def _load(tmp: Path, *docs: str) -> Bootstrap:
    for i, d in enumerate(docs):
        (tmp / f"{i}.yaml").write_text(textwrap.dedent(d))
    return load([str(tmp)])


def _se() -> str:
    return ISTIO.split("---")[0]


def _cluster(b: Bootstrap, name: str = "outbound|80||backend.lab") -> Cluster:
    c = b.cluster(name)
    assert c is not None
    return c


def test_http_options_panic_threshold_and_consecutive_errors(tmp_path: Path) -> None:
    b = _load(tmp_path, _se(), POLICY)
    c = _cluster(b)
    assert c.http_idle_timeout == 30.0 and c.max_requests_per_connection == 2 and c.max_connection_duration == 3600.0
    assert c.healthy_panic_threshold == 40.0  # istiod: minHealthPercent
    # consecutiveErrors: gateway errors ejected, 5xx not (istiod's mapping of the old field).
    od = c.outlier_detection
    assert od is not None
    assert (od.consecutive_gateway_failure, od.enforcing_consecutive_gateway_failure) == (3, 100)
    assert od.enforcing_consecutive_5xx == 0
    # The subset's connectionPool replaces the rule's: idle timeout off, no request limit.
    v1 = _cluster(b, "outbound|80|v1|backend.lab")
    assert v1.http_idle_timeout == 0.0 and v1.max_requests_per_connection == 0
    # Without a DestinationRule, Envoy's defaults.
    (tmp_path / "bare").mkdir()
    bare = _cluster(_load(tmp_path / "bare", _se()))
    assert bare.http_idle_timeout == DEFAULT_UPSTREAM_HTTP_IDLE_TIMEOUT and bare.max_requests_per_connection == 0


def test_consecutive_5xx_errors_win_over_consecutive_errors(tmp_path: Path) -> None:
    both = _dr({"outlierDetection": {"consecutiveErrors": 3, "consecutive5xxErrors": 4}})
    od = _cluster(_load(tmp_path, _se(), both)).outlier_detection
    assert od is not None and (od.consecutive_5xx, od.enforcing_consecutive_5xx) == (4, 100)
    assert od.consecutive_gateway_failure == 3


def _retries(b: Bootstrap) -> dict[str, RetryPolicy | None]:
    """Route name → retry policy, for the first virtual host on port 80."""
    lis = b.listener("0.0.0.0_80")
    assert lis is not None
    hcm = lis.filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    vhost = hcm.route_config.virtual_hosts[0]
    return {r.name: r.route.retry_policy for r in vhost.routes if r.route is not None}


def test_retries_backoff_is_the_base_interval(tmp_path: Path) -> None:
    (policy,) = _retries(_load(tmp_path, _se(), POLICY)).values()
    assert policy is not None
    assert policy.base_interval == 0.1 and policy.max_backoff == pytest.approx(1.0)


def test_http_options_exported_and_read_back(tmp_path: Path) -> None:
    b = _load(tmp_path, _se(), POLICY)
    c = _cluster(b)
    out = {x["name"]: x for x in to_envoy(b)["static_resources"]["clusters"]}
    opts = out[c.name]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert opts["common_http_protocol_options"] == {
        "idle_timeout": "30s",
        "max_requests_per_connection": 2,
        "max_connection_duration": "3600s",
    }
    assert "typed_extension_protocol_options" not in out["PassthroughCluster"]
    path = tmp_path / "out" / "envoy.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(to_envoy(b)))
    again = load_file(str(path))
    assert again.cluster(c.name) == c
    assert again.cluster("outbound|80|v1|backend.lab") == _cluster(b, "outbound|80|v1|backend.lab")


@needs_envoy
@pytest.mark.envoy
def test_real_envoy_accepts_the_http_options(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    assert_envoy_accepts(tmp_path, _load(tmp_path / "cfg", _se(), POLICY))


def test_pool_closes_a_connection_idle_for_the_idle_timeout() -> None:
    pool, _, loop = _pool(CircuitBreakers())
    object.__setattr__(pool.cluster, "config", Cluster("c", http_idle_timeout=0.05))
    try:
        conn = UpstreamConnection(pool)
        pool.release(conn)
        # Busy when the first check comes: kept, and checked again once released.
        s = FakeStream()
        assert pool.acquire(s) is conn  # type: ignore[arg-type]
        loop.run_until_complete(asyncio.sleep(0.07))
        assert not conn.closed and conn.idle_timer is None
        conn.request_done = True
        conn._message_complete(True)
        assert pool.idle == [conn] and conn.idle_timer is not None
        loop.run_until_complete(asyncio.sleep(0.03))
        assert not conn.closed  # idle for less than the timeout
        loop.run_until_complete(asyncio.sleep(0.05))
        assert conn.closed and pool.idle == [] and pool.rq_stats.upstream_cx_idle_timeout == 1
    finally:
        loop.close()


def test_pool_closes_a_connection_after_max_requests_per_connection() -> None:
    pool, _, loop = _pool(CircuitBreakers())
    object.__setattr__(pool.cluster, "config", Cluster("c", max_requests_per_connection=2))
    try:
        conn = UpstreamConnection(pool)
        for expect_idle in (True, False):
            conn.attach(FakeStream())  # type: ignore[arg-type]
            conn.request_done = True
            conn._message_complete(True)
            assert (pool.idle == [conn]) is expect_idle
            pool.idle.clear()
        assert conn.closed and pool.rq_stats.upstream_cx_max_requests == 1
    finally:
        loop.close()


def test_pool_closes_a_connection_past_max_connection_duration() -> None:
    pool, _, loop = _pool(CircuitBreakers())
    object.__setattr__(pool.cluster, "config", Cluster("c", max_connection_duration=0.05))
    try:
        # Busy when it comes of age: closed once its response completes, not reused.
        old = UpstreamConnection(pool)
        old.born = loop.time() - 1.0
        old.attach(FakeStream())  # type: ignore[arg-type]
        old.request_done = True
        old._message_complete(True)
        assert old.closed and pool.idle == [] and pool.rq_stats.upstream_cx_max_duration_reached == 1
        # Idle when it comes of age: closed then, before any idle timeout.
        young = UpstreamConnection(pool)
        young.born = loop.time()
        pool.release(young)
        loop.run_until_complete(asyncio.sleep(0.08))
        assert young.closed and pool.idle == [] and pool.rq_stats.upstream_cx_max_duration_reached == 2
        assert pool.rq_stats.upstream_cx_idle_timeout == 0
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("policy", "path", "words"),
    [
        ("connectionPool: {tcp: {idleTimeout: 10s}}", "connectionPool.tcp.idleTimeout", "http.idleTimeout"),
        ("tunnel: {targetHost: x, targetPort: 8080}", "tunnel", "tunnel is not supported"),
        ("proxyProtocol: {version: V1}", "proxyProtocol", "PROXY protocol"),
        ("outlierDetection: {consecutiveLocalOriginFailures: 2}", "outlierDetection.consecutiveLocalOriginFailures", "local-origin"),
    ],
)
def test_traffic_policy_fields_pysidecar_would_not_honour_are_refused(
    tmp_path: Path, policy: str, path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, _se(), _dr(yaml.safe_load("{" + policy + "}")))
    assert e.value.path == f"spec.trafficPolicy.{path}" and e.value.file.endswith("1.yaml")
    assert words in e.value.message and "DestinationRule default/backend" in e.value.message


def test_wire_level_fields_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool = {"tcp": {"tcpKeepalive": {"time": "10s"}}, "http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}}
    _load(tmp_path, _se(), _dr({"connectionPool": pool}))
    assert "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: ignored" in caplog.text
    # The upstream protocol fields are acted on (tests/unit/test_upstream_http_config.py).
    assert "h2UpgradePolicy" not in caplog.text and "useClientProtocol" not in caplog.text


@pytest.mark.parametrize(
    ("mesh", "path", "words"),
    [
        ("pathNormalization: {normalization: MERGE_SLASHES}", "pathNormalization", "MERGE_SLASHES is not supported"),
        ("pathNormalization: {}", "pathNormalization", "DEFAULT is not supported"),
    ],
)
def test_mesh_fields_pysidecar_would_not_honour_are_refused(tmp_path: Path, mesh: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, mesh + "\noutboundTrafficPolicy: {mode: ALLOW_ANY}\n")
    assert e.value.path == path and words in e.value.message


def test_mesh_default_http_retry_policy_for_routes_without_retries(tmp_path: Path) -> None:
    vs = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: backend}
    spec:
      hosts: [backend.lab]
      http:
      - {name: own, match: [{uri: {prefix: /own}}], retries: {attempts: 1}, route: [{destination: {host: backend.lab}}]}
      - {name: rest, route: [{destination: {host: backend.lab}}]}
    """
    (tmp_path / "a").mkdir()
    mesh = "defaultHttpRetryPolicy: {attempts: 5, retryOn: 'gateway-error,503', perTryTimeout: 2s}\n"
    got = _retries(_load(tmp_path / "a", _se(), vs, mesh))
    assert got["rest"] == RetryPolicy(
        ("gateway-error", "retriable-status-codes"), 5, 2.0, (503,), previous_hosts=True, host_selection_max_attempts=5
    )
    own = got["own"]  # the VirtualService's own retries: Istio's defaults but for attempts
    assert own is not None and own.num_retries == 1 and own.retry_on == ISTIO_DEFAULT_RETRY.retry_on
    # A service without a VirtualService: its default route too; attempts 0 turns retries off.
    (tmp_path / "b").mkdir()
    assert _retries(_load(tmp_path / "b", _se(), "defaultHttpRetryPolicy: {attempts: 0}\n")) == {"default": None}
    (tmp_path / "c").mkdir()
    assert _retries(_load(tmp_path / "c", _se())) == {"default": ISTIO_DEFAULT_RETRY}


def test_mesh_path_normalization_none_and_h2_upgrade(tmp_path: Path) -> None:
    b = _load(tmp_path, "pathNormalization: {normalization: NONE}\nh2UpgradePolicy: UPGRADE\naccessLogFile: ''\n")
    assert b.mesh.h2_upgrade


def test_sidecar_egress_proxy_refused(tmp_path: Path) -> None:
    sc = """
    apiVersion: networking.istio.io/v1
    kind: Sidecar
    metadata: {name: default}
    spec:
      outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress.lab, port: {number: 80}}}
    """
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, sc)
    assert e.value.path == "spec.outboundTrafficPolicy.egressProxy" and "egressProxy is not supported" in e.value.message
