"""`pysidecar wait`: the postStart hook polls readiness until 200 or gives up."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from pysidecar.cli import main as cli_main
from pysidecar.inject.wait import probe, wait_ready


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_ready_after_a_few_polls() -> None:
    answers = iter([None, 503, 503, 200])
    clock = FakeClock()
    ready, last = wait_ready("u", 10, 0.5, 0.5, get=lambda url, t: next(answers), clock=clock, sleep=clock.sleep)
    assert (ready, last, clock.now) == (True, 200, 1.5)


def test_gives_up_at_the_timeout() -> None:
    clock = FakeClock()
    ready, last = wait_ready("u", 2, 0.5, 0.5, get=lambda url, t: 503, clock=clock, sleep=clock.sleep)
    assert (ready, last) == (False, 503) and clock.now <= 2


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_probe_and_command_against_a_real_server(server: http.server.HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz/ready"
    assert probe(url, 1) == 200
    assert cli_main(["wait", "--url", url, "--timeout-seconds", "2"]) == 0
    _Handler.status = 503
    try:
        assert probe(url, 1) == 503
        assert cli_main(["wait", "--url", url, "--timeout-seconds", "0.3", "--period-ms", "100"]) == 1
        assert "not ready" in capsys.readouterr().err
    finally:
        _Handler.status = 200


def test_nothing_listening_and_bad_arguments() -> None:
    assert probe("http://127.0.0.1:9/healthz/ready", 0.2) is None
    assert cli_main(["wait", "--timeout-seconds", "0"]) == 2
