"""Access log formatting (Istio's text and JSON, custom formats) and the buffered writer."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from pysidecar.common.access_format import FormatError, compile_json, compile_text, iso_time
from pysidecar.common.stream_info import StreamInfo
from pysidecar.model import AccessLogConfig
from pysidecar.observe.access_log import AccessLog, formatter, from_flags

START = 1606339578.409  # 2020-11-25T21:26:18.409Z


def http_record() -> StreamInfo:
    info = StreamInfo(
        start_time=START,
        protocol="HTTP/1.1",
        method="GET",
        path="/status/418",
        authority="httpbin:8000",
        user_agent="curl/7.73.0-DEV",
        request_id="84961386-6d84-929d-98bd-c5aee93b5c88",
        response_code=418,
        response_code_details="via_upstream",
        bytes_received=0,
        bytes_sent=135,
        upstream_service_time_ms=4,
        upstream_host="10.44.1.27:80",
        upstream_cluster="outbound|8000||httpbin.foo.svc.cluster.local",
        upstream_local_address="10.44.1.23:37652",
        downstream_local_address="10.0.45.184:8000",
        downstream_remote_address="10.44.1.23:46520",
        route_name="default",
    )
    info.end_time = START + 0.004
    return info


def tcp_record(flags: list[str], cluster: str = "BlackHoleCluster") -> StreamInfo:
    info = StreamInfo(
        start_time=START,
        response_flags=flags,
        upstream_cluster=cluster,
        downstream_local_address="198.19.0.10:9000",
        downstream_remote_address="198.18.0.2:40000",
    )
    info.end_time = START + 0.001
    return info


def test_istio_text_line_for_http_matches_istios() -> None:
    line = formatter(AccessLogConfig("/dev/null"))(http_record())
    assert line == (
        '[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 4 4 '
        '"-" "curl/7.73.0-DEV" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" "10.44.1.27:80" '
        "outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 "
        "- default\n"
    )


def test_istio_text_line_for_a_blocked_tcp_connection() -> None:
    line = formatter(AccessLogConfig("/dev/null"))(tcp_record(["UH"]))
    assert line == (
        '[2020-11-25T21:26:18.409Z] "- - -" 0 UH - - "-" 0 0 1 - "-" "-" "-" "-" "-" BlackHoleCluster - '
        "198.19.0.10:9000 198.18.0.2:40000 - -\n"
    )


def test_original_path_wins_over_path() -> None:
    info = http_record()
    info.original_path = "/before-rewrite"
    assert '"GET /before-rewrite HTTP/1.1"' in compile_text(
        '"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"'
    )(info)


def test_json_has_istios_keys_sorted_and_typed() -> None:
    line = formatter(AccessLogConfig("/dev/null", "JSON"))(http_record())
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert list(record) == sorted(record)
    assert len(record) == 24
    assert record["response_code"] == 418 and record["bytes_sent"] == 135 and record["duration"] == 4
    assert record["upstream_service_time"] == "4"
    assert record["x_forwarded_for"] is None
    assert record["response_flags"] == "-"
    assert record["upstream_cluster"] == "outbound|8000||httpbin.foo.svc.cluster.local"
    tcp = json.loads(formatter(AccessLogConfig("/dev/null", "JSON"))(tcp_record(["UF", "URX"])))
    assert tcp["method"] is None and tcp["response_code"] == 0 and tcp["response_flags"] == "UF,URX"


def test_custom_text_format_with_arguments_and_truncation() -> None:
    info = http_record()
    info.request_headers = {"x-custom": "abcdef"}
    info.response_headers = {"content-type": "text/plain"}
    fmt = compile_text(
        "%START_TIME(%Y/%m/%d %H:%M:%S.%3f)% %REQ(X-CUSTOM):3% %RESP(CONTENT-TYPE)% %REQ(X-MISSING)% "
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %UPSTREAM_HOST% 100%"
    )
    assert fmt(info) == "2020/11/25 21:26:18.409 abc text/plain - 10.44.1.23 10.44.1.27:80 100%\n"


def test_custom_json_format_from_flags() -> None:
    config = from_flags("/dev/null", '{"code": "%RESPONSE_CODE%", "where": "%UPSTREAM_HOST% via x"}')
    assert config.encoding == "JSON"
    assert json.loads(formatter(config)(http_record())) == {"code": 418, "where": "10.44.1.27:80 via x"}


def test_flags_choose_the_format() -> None:
    assert from_flags("/x", None) == AccessLogConfig("/x", "TEXT")
    assert from_flags("/x", "json") == AccessLogConfig("/x", "JSON")
    assert from_flags("/x", "%DURATION%") == AccessLogConfig("/x", "TEXT", "%DURATION%")


@pytest.mark.parametrize("fmt", ["%NOT_AN_OPERATOR%", "%REQ()%", "%PROTOCOL(x)%"])
def test_unknown_operators_fail_at_load(fmt: str) -> None:
    with pytest.raises(FormatError):
        compile_text(fmt)


def test_bad_json_format_fails_at_load() -> None:
    with pytest.raises(FormatError):
        formatter(AccessLogConfig("/x", "JSON", "{not json"))
    with pytest.raises(FormatError):
        compile_json({"a": "%NOPE%"})


def test_iso_time_has_milliseconds_and_zulu() -> None:
    assert iso_time(START) == "2020-11-25T21:26:18.409Z"
    assert iso_time(START + 1.5) == "2020-11-25T21:26:19.909Z"


def test_writer_buffers_whole_lines_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("existing\n")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        a = AccessLog(AccessLogConfig(str(path), "TEXT", "%RESPONSE_CODE%"), loop)
        b = AccessLog(AccessLogConfig(str(path), "TEXT", "%BYTES_SENT%"), loop)
        a.log(http_record())
        b.log(http_record())
        assert path.read_text() == "existing\n"  # buffered: no write per line
        a.flush()
        b.close()
        a.log(http_record())
        a.close()

    asyncio.run(run())
    assert path.read_text() == "existing\n418\n135\n418\n"
    assert oct(os.stat(path).st_mode & 0o777) in ("0o644", "0o600", "0o640")


def test_stdout_is_the_inherited_descriptor_not_reopened(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    # In a container the proxy (uid 1337) may not reopen the runtime's root-owned stdout as
    # /dev/stdout (EACCES); like Envoy's stdout destination, the log writes to fd 1 itself.
    real_open = os.open

    def no_reopen(path: str, *args: int) -> int:
        if path in ("/dev/stdout", "/dev/stderr"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", no_reopen)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for path in ("/dev/stdout", "/dev/stderr"):
            a = AccessLog(AccessLogConfig(path, "TEXT", "%RESPONSE_CODE%"), loop)
            a.log(http_record())
            a.close()

    asyncio.run(run())
    out, err = capfd.readouterr()
    assert (out, err) == ("418\n", "418\n")
    os.fstat(1)  # the process's own stdout is still open
