"""A misbehaving HTTP/2 upstream (tests/h2_upstream_app.py) behind both proxies
(scenarios/h2bad.yaml): each case's answer to curl --http2-prior-knowledge and the access
log's status, flags and details, as recorded from Envoy 1.40 and asserted on both; afterwards
no request is left active and no gauge is negative.

Envoy 1.40: RST_STREAM before the response is 503 `remote reset`, UR; after it started the
client's stream is reset, UR, `upstream_reset_after_response_started{remote_reset}`; GOAWAY and
close mid-response UC `{connection_termination}`; an undecodable header block 502 UPE
`protocol error`; a response header block past the limit 503 UR `remote reset` (nghttp2 resets
that stream); a window that never opens holds the request body until the route timeout (504 UT).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conformance.harness import Stack, envoy_binary, running, wait_port

pytestmark = [pytest.mark.envoy]

ENVOY = envoy_binary()
KINDS = [pytest.param("envoy", marks=pytest.mark.skipif(ENVOY is None, reason="envoy not installed")), "ours"]
RESET_BODY = "upstream connect error or disconnect/reset before headers. reset reason: "


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running("h2bad.yaml", ENVOY, ("bad",)) as s:
        srv = s._spawn([sys.executable, "-m", "tests.h2_upstream_app", "--port", str(s.ports["bad"])], "bad")
        wait_port(s.ports["bad"], srv)
        yield s


def _curl(stack: Stack, kind: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    if kind not in stack.proxies:
        pytest.skip(f"{kind} not running")
    return subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_code}", *args,
         f"http://127.0.0.1:{stack.proxies[kind]}{path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _logged(stack: Stack, kind: str, path: str) -> str:
    """The access log line (status, flags, details) of the last request to `path`."""
    for _ in range(50):
        with open(os.path.join(stack.dir, f"{kind}.log")) as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith(f"ACCESS {path} ")]
        if lines:
            return lines[-1].removeprefix(f"ACCESS {path} ")
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {path}")


@pytest.mark.parametrize(
    ("path", "status", "body", "logged"),
    [
        ("/ok", "200", "ok\n", "200 - via_upstream"),
        ("/rst-before", "503", RESET_BODY + "remote reset", "503 UR upstream_reset_before_response_started{remote_reset}"),
        ("/garbage", "502", RESET_BODY + "protocol error", "502 UPE upstream_reset_before_response_started{protocol_error}"),
        ("/big-headers", "503", RESET_BODY + "remote reset", "503 UR upstream_reset_before_response_started{remote_reset}"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_answers_before_the_response(stack: Stack, kind: str, path: str, status: str, body: str, logged: str) -> None:
    r = _curl(stack, kind, path)
    got_body, _, got_status = r.stdout.rpartition("\n")
    assert (got_status, got_body) == (status, body)
    assert _logged(stack, kind, path) == logged


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/rst-mid", "200 UR upstream_reset_after_response_started{remote_reset}"),
        ("/goaway-mid", "200 UC upstream_reset_after_response_started{connection_termination}"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_resets_after_the_response_started(stack: Stack, kind: str, path: str, logged: str) -> None:
    r = _curl(stack, kind, path)
    assert r.returncode == 92 and "was not closed cleanly" in r.stderr  # the client's stream is reset
    assert _logged(stack, kind, path) == logged


@pytest.mark.parametrize("kind", KINDS)
def test_a_window_that_never_opens(stack: Stack, kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    body = tmp_path_factory.mktemp("body") / "1m"
    body.write_bytes(b"x" * (1 << 20))
    r = _curl(stack, kind, "/no-window", "--data-binary", f"@{body}")
    assert r.stdout.rpartition("\n")[2] == "504"
    assert _logged(stack, kind, "/no-window") == "504 UT response_timeout"


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_left_active(stack: Stack, kind: str) -> None:
    if kind not in stack.proxies:
        pytest.skip(f"{kind} not running")
    admin = stack.ports["a1" if kind == "ours" else "a2"]
    for _ in range(50):
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
            stats = {k: int(v) for k, v in re.findall(r"^(\S+): (-?\d+)$", r.read().decode(), re.M)}
        if stats.get("cluster.bad.upstream_rq_active", 0) == 0:
            break
        time.sleep(0.1)
    assert {k: v for k, v in stats.items() if v < 0} == {}
    assert stats.get("cluster.bad.upstream_rq_active", 0) == 0 and stats.get("http.h2bad.downstream_rq_active", 0) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_request_trailers_reach_an_http2_upstream(stack: Stack, kind: str) -> None:
    """A client's request trailers (HTTP/2: HEADERS with END_STREAM after the body) go on to
    an HTTP/2 upstream, after the whole body, as from Envoy."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    if kind not in stack.proxies:
        pytest.skip(f"{kind} not running")
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    with socket.create_connection(("127.0.0.1", stack.proxies[kind]), timeout=10) as s:
        c.initiate_connection()
        c.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"bad.test"),
                           (b":path", b"/echo-trailers"), (b"te", b"trailers")])  # fmt: skip
        c.send_data(1, b"y" * 3000)
        c.send_headers(1, [(b"x-checksum", b"abc"), (b"x-more", b"1")], end_stream=True)
        s.sendall(c.data_to_send())
        headers: dict[bytes, bytes] = {}
        done = False
        while not done:
            data = s.recv(65536)
            assert data, "connection closed before the response"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = dict(ev.headers or [])
                if isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    done = True
            s.sendall(c.data_to_send())
    assert headers[b":status"] == b"200" and headers[b"x-got-length"] == b"3000"
    assert headers[b"x-got-trailers"] == b"x-checksum=abc,x-more=1"
