"""gRPC end to end under real Envoy 1.40 and pysidecar (scenarios/grpc.yaml): a grpcio client
(tests/grpc_app.py, generic calls, raw bytes) through the proxy's h2c listener to a grpcio
server behind an HTTP/2 cluster. Every test runs on each proxy and asserts the outcome recorded
from Envoy 1.40 (status code, grpc-message, messages, metadata and trailers, counters), so
Envoy is the oracle and pysidecar must give the same.

Recorded on Envoy 1.40: a route timeout is a trailers-only UNAVAILABLE `upstream request
timeout` (504 mapped); an upstream that refuses connections UNAVAILABLE `upstream connect
error or disconnect/reset before headers. reset reason: remote connection failure`; no route
UNIMPLEMENTED with an empty message (404 mapped); retry_on unavailable retries a trailers-only
grpc-status 14; a gRPC error status from the upstream passes through as it is (HTTP 200).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import grpc_app as app
from tests.conformance.harness import Stack, envoy_binary, running, wait_port

pytestmark = [pytest.mark.envoy]

ENVOY = envoy_binary()
MIB4 = 4 * 1024 * 1024
# Until pysidecar's HTTP/2 upstream carries these (issue 14), its cases are expected to fail;
# strict, so the marker has to go once they pass.
KINDS = [
    pytest.param("envoy", marks=pytest.mark.skipif(ENVOY is None, reason="envoy not installed")),
    "ours",
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("nginx") is None:
        pytest.skip("nginx needed by the harness")
    with running("grpc.yaml", ENVOY, ("grpc", "h2c")) as s:
        srv = s._spawn(
            [sys.executable, "-m", "tests.grpc_app", "serve", "--port", str(s.ports["grpc"]), "--name", "up"], "grpc"
        )
        wait_port(s.ports["grpc"], srv)
        _h2c_nginx(s)
        yield s


def _h2c_nginx(s: Stack) -> None:
    """nginx with `listen ... http2` and no TLS: HTTP/2 with prior knowledge only."""
    root = os.path.join(s.dir, "h2c")
    os.makedirs(os.path.join(root, "html"))
    Path(root, "html", "index.html").write_text("h2c\n")
    conf = os.path.join(root, "nginx.conf")
    user = "user root;" if os.geteuid() == 0 else ""
    Path(conf).write_text(
        f"daemon off; pid {root}/nginx.pid; error_log {root}/error.log; {user}\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log off; default_type text/html; client_body_temp_path {root}/tmp;"
        f" server {{ listen 127.0.0.1:{s.ports['h2c']} http2; root {root}/html; }} }}\n"
    )
    wait_port(s.ports["h2c"], s._spawn(["nginx", "-p", root, "-c", conf], "nginx-h2c"))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, stack: Stack) -> str:
    k: str = request.param
    if k not in stack.proxies:
        pytest.skip(f"{k} not running")
    return k


@pytest.fixture
def channel(stack: Stack, kind: str) -> Iterator[grpc.Channel]:
    ch = app.channel(stack.proxies[kind])
    yield ch
    ch.close()


def stats(stack: Stack, kind: str) -> dict[str, int]:
    admin = stack.ports["a1" if kind == "ours" else "a2"]
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        text = r.read().decode()
    return {k: int(v) for k, v in re.findall(r"^(\S+): (-?\d+)$", text, re.M)}


class Delta:
    """Counters moved by the calls inside the block (the admin's /stats before and after)."""

    def __init__(self, stack: Stack, kind: str) -> None:
        self.stack, self.kind = stack, kind
        self.moved: dict[str, int] = {}

    def __enter__(self) -> Delta:
        self.before = stats(self.stack, self.kind)
        return self

    def __exit__(self, *exc: object) -> None:
        after = stats(self.stack, self.kind)
        self.moved = {k: v - self.before.get(k, 0) for k, v in after.items() if v != self.before.get(k, 0)}


def _meta(md: object) -> dict[str, str]:
    return {m.key: m.value for m in md or ()}  # type: ignore[attr-defined]


def _error(f: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        f()  # type: ignore[operator]
    return e.value


def test_unary_with_metadata_and_trailers(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    with Delta(stack, kind) as d:
        resp, call = app.unary(channel, b"hello")
    assert resp == b"hello"
    initial, trailing = _meta(call.initial_metadata()), _meta(call.trailing_metadata())
    assert initial["x-served-by"] == "up" and initial["server"] == "envoy" and "x-envoy-upstream-service-time" in initial
    assert trailing == {"x-trailer": "done"}
    assert d.moved["cluster.grpc.upstream_rq_200"] == 1 and d.moved["http.grpc.downstream_rq_2xx"] == 1
    assert stats(stack, kind)["cluster.grpc.upstream_cx_http2_total"] >= 1
    assert stats(stack, kind).get("cluster.grpc.upstream_cx_http1_total", 0) == 0


def test_4mib_messages_both_ways(kind: str, channel: grpc.Channel) -> None:
    assert len(app.unary(channel, b"size:%d" % MIB4)[0]) == MIB4
    req = bytes(range(256)) * (MIB4 // 256)
    assert app.unary(channel, req)[0] == req


def test_server_streaming(kind: str, channel: grpc.Channel) -> None:
    got = app.server_stream(channel, b"20x100000")
    assert [len(m) for m in got] == [100000] * 20 and got[1][:1] == b"B"


def test_client_streaming(kind: str, channel: grpc.Channel) -> None:
    assert app.client_stream(channel, [b"a" * 100000] * 30) == b"3000000"


def test_bidi_streaming(kind: str, channel: grpc.Channel) -> None:
    msgs = [bytes([i]) * (1000 * (i + 1)) for i in range(10)]
    assert app.bidi(channel, msgs) == msgs


def test_deadline_exceeded_by_the_client(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    app.unary(channel, b"warm")  # connected first: under load the deadline could expire before
    e = _error(lambda: app.unary(channel, b"sleep:2", timeout=0.5))
    assert e.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # (The proxy's downstream_rq_rx_reset for the client's RST_STREAM is not asserted: in the
    # full suite on the loaded machine Envoy's count lagged past 5 s once. The stream leaves
    # nothing active: test_gauges_never_below_zero.)


def test_route_timeout_is_unavailable_upstream_request_timeout(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    with Delta(stack, kind) as d:
        e = _error(lambda: app.unary(channel, b"sleep:2", method="Slow"))
    assert (e.code(), e.details()) == (grpc.StatusCode.UNAVAILABLE, "upstream request timeout")
    assert d.moved["cluster.grpc.upstream_rq_timeout"] == 1


def test_grpc_timeout_under_grpc_timeout_header_max(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    """max_stream_duration.grpc_timeout_header_max 0.3 s: the client's 10 s deadline (grpc-timeout)
    is capped to 0.3 s; Envoy 1.40 answers DEADLINE_EXCEEDED `downstream duration timeout`.
    Through Envoy, grpc-core reports the same DEADLINE_EXCEEDED with its own text `Deadline
    Exceeded` in about half the runs (seen 3 of 6, under a second each, so not the client's
    10 s deadline): that text is accepted from Envoy only, and the cap is what both must show
    (the upstream would answer at 4 s)."""
    started = time.monotonic()
    e = _error(lambda: app.unary(channel, b"sleep:4", timeout=10, method="Capped"))
    assert time.monotonic() - started < 3.5, "the 0.3 s cap did not apply"
    texts = {"downstream duration timeout"} | ({"Deadline Exceeded"} if kind == "envoy" else set())
    assert e.code() is grpc.StatusCode.DEADLINE_EXCEEDED and e.details() in texts, e.details()


def test_upstream_down_is_unavailable(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    with Delta(stack, kind) as d:
        e = _error(lambda: app.unary(channel, b"x", service="lab.Dead"))
    assert e.code() is grpc.StatusCode.UNAVAILABLE
    assert e.details() == "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    assert d.moved["cluster.dead.upstream_cx_connect_fail"] == 1 and d.moved["cluster.dead.upstream_rq_503"] == 1


def test_no_route_is_unimplemented(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    with Delta(stack, kind) as d:
        e = _error(lambda: app.unary(channel, b"x", service="other.Svc"))
    assert (e.code(), e.details()) == (grpc.StatusCode.UNIMPLEMENTED, "")
    assert d.moved["http.grpc.no_route"] == 1


@pytest.mark.parametrize(("code", "status"), [(8, "RESOURCE_EXHAUSTED"), (13, "INTERNAL"), (14, "UNAVAILABLE")])
def test_upstream_status_passes_through(stack: Stack, kind: str, channel: grpc.Channel, code: int, status: str) -> None:
    with Delta(stack, kind) as d:
        e = _error(lambda: app.unary(channel, b"status:%d" % code))
    assert (e.code().name, e.details()) == (status, f"asked for {code}")
    assert d.moved["cluster.grpc.upstream_rq_200"] == 1  # a gRPC error is an HTTP 200


def test_retry_on_unavailable(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    with Delta(stack, kind) as d:
        resp, _ = app.unary(channel, b"fail-once:" + kind.encode(), method="Retry")
    assert resp == b"fail-once:" + kind.encode()
    assert d.moved["cluster.grpc.upstream_rq_retry"] == 1 and d.moved["cluster.grpc.upstream_rq_retry_success"] == 1
    # Envoy charges the response code of the answer it keeps only, not the retried one.
    assert d.moved["cluster.grpc.upstream_rq_200"] == 1


def test_gauges_never_below_zero(stack: Stack, kind: str, channel: grpc.Channel) -> None:
    """After every case above (same module, same proxies): no gauge went negative and no
    request is left active (upstream_rq_active was -1 after failures, issue 14)."""
    app.unary(channel, b"settle")
    s = stats(stack, kind)
    negative = {k: v for k, v in s.items() if v < 0}
    assert negative == {}
    assert s.get("cluster.grpc.upstream_rq_active", 0) == 0 and s.get("cluster.dead.upstream_rq_active", 0) == 0


ALL_KINDS = [pytest.param("envoy", marks=pytest.mark.skipif(ENVOY is None, reason="envoy not installed")), "ours"]


@pytest.mark.parametrize("http", ["--http1.1", "--http2-prior-knowledge"])
@pytest.mark.parametrize("proxy", ALL_KINDS)
def test_http1_cluster_to_an_http2_server(stack: Stack, proxy: str, http: str) -> None:
    """HTTP/1.1 to the gRPC server (cluster grpc_h1): the server's SETTINGS arrive before the
    pool hands the connection over and break the HTTP/1 parse. Envoy 1.40: 502 `protocol
    error`, upstream_cx_protocol_error; the request is no longer active (pysidecar ended the
    attempt twice here, leaving upstream_rq_active at -1, and answered 503 UC)."""
    before = stats(stack, proxy)
    r = subprocess.run(
        ["curl", "-sS", http, "-w", "\n%{http_code}", f"http://127.0.0.1:{stack.proxies[proxy]}/h1/x"],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    body, code = r.stdout.rsplit("\n", 1)
    assert (code, body) == ("502", "upstream connect error or disconnect/reset before headers. reset reason: protocol error")
    after = stats(stack, proxy)
    assert after["cluster.grpc_h1.upstream_cx_protocol_error"] - before.get("cluster.grpc_h1.upstream_cx_protocol_error", 0) == 1
    assert after["cluster.grpc_h1.upstream_rq_502"] - before.get("cluster.grpc_h1.upstream_rq_502", 0) == 1
    assert after.get("cluster.grpc_h1.upstream_rq_active", 0) == 0


@pytest.mark.parametrize("http", ["--http2-prior-knowledge", "--http1.1"])
@pytest.mark.parametrize("proxy", KINDS)
def test_curl_to_an_h2c_only_upstream(stack: Stack, proxy: str, http: str) -> None:
    """An upstream that speaks only h2c (nginx `listen ... http2`), HTTP/2 or HTTP/1.1 from
    the client: the cluster's explicit HTTP/2 reaches it (issue 14: pysidecar answered 503)."""
    if proxy not in stack.proxies:
        pytest.skip(f"{proxy} not running")
    r = subprocess.run(
        ["curl", "-sS", http, "-w", "\n%{http_code}", f"http://127.0.0.1:{stack.proxies[proxy]}/h2c/index.html"],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    assert r.stdout == "h2c\n\n200"


@pytest.mark.parametrize("proxy", KINDS)
def test_h2load_to_an_h2c_only_upstream(stack: Stack, proxy: str) -> None:
    """h2load: 400 requests on 4 connections x 10 streams, all 200, multiplexed upstream on
    few connections (Envoy 1.40: one per worker)."""
    if proxy not in stack.proxies or shutil.which("h2load") is None:
        pytest.skip("h2load or the proxy missing")
    before = stats(stack, proxy)
    r = subprocess.run(
        ["h2load", "-n", "400", "-c", "4", "-m", "10", f"http://127.0.0.1:{stack.proxies[proxy]}/h2c/index.html"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "400 succeeded" in r.stdout and "status codes: 400 2xx" in r.stdout, r.stdout
    after = stats(stack, proxy)
    opened = after["cluster.h2c.upstream_cx_http2_total"] - before.get("cluster.h2c.upstream_cx_http2_total", 0)
    assert 0 <= opened <= 1 and after["cluster.h2c.upstream_cx_active"] == 1
    assert after["cluster.h2c.upstream_rq_200"] - before.get("cluster.h2c.upstream_rq_200", 0) == 400


def test_istio_metrics_say_grpc_and_its_status(stack: Stack, channel_ours: grpc.Channel) -> None:
    channel = channel_ours
    """pysidecar's istio_requests_total for gRPC: request_protocol="grpc" and
    grpc_response_status from the trailers (0), a trailers-only upstream status (13) and a
    local reply (12, no route) — Istio's stats filter reports these labels."""
    app.unary(channel, b"ok")
    _error(lambda: app.unary(channel, b"status:13"))
    _error(lambda: app.unary(channel, b"x", service="other.Svc"))
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['a1']}/stats/prometheus", timeout=5) as r:
        text = r.read().decode()
    got = set(re.findall(r'istio_requests_total\{[^}]*request_protocol="(\w+)"[^}]*grpc_response_status="(\d*)"', text))
    assert {("grpc", "0"), ("grpc", "13"), ("grpc", "12")} <= got


@pytest.fixture
def channel_ours(stack: Stack) -> Iterator[grpc.Channel]:
    ch = app.channel(stack.proxies["ours"])
    yield ch
    ch.close()
