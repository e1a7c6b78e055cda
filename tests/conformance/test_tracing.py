"""Envoy's zipkin tracer as Istio configures it, under pysidecar and real Envoy on the same
config (scenarios/tracing.yaml), both reporting into one lab collector: the B3 headers the
upstream receives (names, order, formats; a root span's id is its trace id's low 64 bits, as
seed 000 shows), the trace decision in x-request-id, sampling (random 0 %: `x-b3-sampled: 0`
and no span; x-client-trace-id: traced), the child span of an incoming B3 context, and the
Zipkin v2 spans (kind, name, annotations, localEndpoint, tags, parent/child ids).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conformance.harness import Stack, envoy_binary, exchange, running

pytestmark = pytest.mark.envoy

ENVOY = envoy_binary()
INCOMING = b"x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124\r\nx-b3-spanid: a2fb4a1d1a96d312\r\nx-b3-sampled: 1\r\n"


class Collector(ThreadingHTTPServer):
    """A Zipkin collector: every POSTed span, with the path it came to."""

    def __init__(self, port: int) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.headers.get("transfer-encoding") == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().strip(), 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("content-length", 0)))
                collector.paths.append(self.path)
                collector.spans.extend(json.loads(body))
                self.send_response(202)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Stack, Collector]]:
    with running("tracing.yaml", ENVOY) as s:
        collector = Collector(s.ports["dead"])
        thread = threading.Thread(target=collector.serve_forever, daemon=True)
        thread.start()
        try:
            yield s, collector
        finally:
            collector.shutdown()
            collector.server_close()


def upstream(port: int, path: str = "/headers", extra: bytes = b"") -> dict[str, str]:
    r = exchange(port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: lab.test\r\nUser-Agent: t\r\n" + extra + b"\r\n")
    assert r is not None and r.status == 200
    return dict((n, v) for n, v in json.loads(r.body)["raw"])


def order(port: int, extra: bytes = b"") -> list[str]:
    r = exchange(port, b"GET /headers HTTP/1.1\r\nHost: lab.test\r\nUser-Agent: t\r\n" + extra + b"\r\n")
    assert r is not None
    return [n for n, _ in json.loads(r.body)["raw"]]


def ports(stack: Stack, listener: str) -> dict[str, int]:
    return dict(stack.proxies) if listener == "" else dict(stack.extra[listener])


def test_root_span_headers_as_seed_000_shows_and_as_envoy_orders_them(stack: tuple[Stack, Collector]) -> None:
    s, _ = stack
    orders = {kind: order(port) for kind, port in ports(s, "_b").items()}
    if "envoy" in orders:
        assert orders["ours"] == orders["envoy"]
    for port in ports(s, "_b").values():
        h = upstream(port)
        trace, span = h["x-b3-traceid"], h["x-b3-spanid"]
        assert len(trace) == 32 and len(span) == 16 and trace[16:] == span  # root: id = low bits
        assert h["x-b3-sampled"] == "1" and "x-b3-parentspanid" not in h
        assert h["x-request-id"][14] == "9"  # Envoy's mark: traced by random sampling
        assert h["x-envoy-decorator-operation"] == "lab.test:80/*"


def test_an_incoming_context_gets_a_child_span(stack: tuple[Stack, Collector]) -> None:
    s, _ = stack
    orders = {kind: order(port, INCOMING) for kind, port in ports(s, "").items()}
    if "envoy" in orders:
        assert orders["ours"] == orders["envoy"]
    for port in ports(s, "").values():
        h = upstream(port, extra=INCOMING)
        assert h["x-b3-traceid"] == "463ac35c9f6413ad48485a3953bb6124"
        assert h["x-b3-parentspanid"] == "a2fb4a1d1a96d312" and h["x-b3-spanid"] != "a2fb4a1d1a96d312"
        assert h["x-b3-sampled"] == "1"


def test_sampling_random_zero_and_client_trace_id(stack: tuple[Stack, Collector]) -> None:
    s, _ = stack
    for port in ports(s, "_c").values():
        h = upstream(port)
        assert h["x-b3-sampled"] == "0" and h["x-request-id"][14] == "4"
        h = upstream(port, extra=b"x-client-trace-id: abc\r\n")
        assert h["x-b3-sampled"] == "1" and h["x-request-id"][14] == "b"


def test_spans_are_reported_as_envoy_reports_them(stack: tuple[Stack, Collector]) -> None:
    s, collector = stack
    sent: dict[str, list[dict[str, str]]] = {}
    for kind in s.proxies:
        sent[kind] = [
            upstream(ports(s, "_b")[kind]),  # CLIENT, root
            upstream(ports(s, "")[kind], extra=INCOMING),  # SERVER, child of the incoming span
            upstream(ports(s, "")[kind], "/nodecor"),  # SERVER, no decorator: named by the host
            upstream(ports(s, "_c")[kind]),  # not sampled: no span
            upstream(ports(s, "_b")[kind]),
        ]
    wanted = {h["x-request-id"] for hs in sent.values() for h in hs if h["x-b3-sampled"] == "1"}
    deadline = time.monotonic() + 12  # Envoy's reporter flushes at 5 spans or every 5 s
    while not wanted <= {sp["tags"]["guid:x-request-id"] for sp in collector.spans}:
        assert time.monotonic() < deadline, (wanted, collector.spans)
        time.sleep(0.2)
    assert set(collector.paths) == {"/api/v2/spans"}
    by_rid = {sp["tags"]["guid:x-request-id"]: sp for sp in collector.spans}
    unsampled = {h["x-request-id"] for hs in sent.values() for h in hs if h["x-b3-sampled"] == "0"}
    assert not unsampled & set(by_rid)

    def shape(sp: dict[str, Any], h: dict[str, str]) -> dict[str, Any]:
        assert sp["traceId"] == h["x-b3-traceid"] and sp["id"] == h["x-b3-spanid"]
        assert sp.get("parentId") == h.get("x-b3-parentspanid")
        assert abs(sp["annotations"][0]["timestamp"] - (sp["timestamp"] + sp["duration"])) < 2000  # the end
        tags = {k: v for k, v in sp["tags"].items() if k not in ("guid:x-request-id", "response_size")}
        return {
            "kind": sp["kind"], "name": sp["name"], "annotation": sp["annotations"][0]["value"],
            "local": sp["localEndpoint"], "tags": tags, "has_parent": "parentId" in sp,
        }  # fmt: skip

    shapes = {kind: [shape(by_rid[h["x-request-id"]], h) for h in hs if h["x-b3-sampled"] == "1"] for kind, hs in sent.items()}
    ours = shapes["ours"]
    assert [(x["kind"], x["name"], x["has_parent"]) for x in ours] == [
        ("CLIENT", "lab.test:80/*", False), ("SERVER", "lab.test:80/*", True), ("SERVER", "lab.test", False),
        ("CLIENT", "lab.test:80/*", False),
    ]  # fmt: skip
    assert ours[0]["tags"]["istio.mesh_id"] == "cluster.local" and ours[2]["tags"]["http.url"] == "http://lab.test/nodecor"
    if "envoy" in shapes:
        assert ours == shapes["envoy"]
