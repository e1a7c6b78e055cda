"""HTTP/2 downstream: the HCM's codec_type / http2_protocol_options from Envoy YAML, and the
request header checks (`header_validation.h2_request_problem`) that end a connection as Envoy's do."""

from __future__ import annotations

from pathlib import Path

import pytest

from pysidecar.common.envoy_json import http_connection_manager as export_hcm
from pysidecar.model.http import CodecType, Http2Options
from pysidecar.proxy.http.header_validation import h2_request_problem as malformed
from tests.unit.test_http_config import error, load, render

H2 = """codec_type: HTTP2
          http2_protocol_options: {max_concurrent_streams: 50, initial_stream_window_size: 65536,
                                   initial_connection_window_size: 1048576}"""


def test_codec_http2_and_options_load_and_export(tmp_path: Path) -> None:
    hcm = load(tmp_path, render(**{"codec_type: AUTO": H2}))
    assert hcm.codec_type is CodecType.HTTP2
    assert hcm.http2 == Http2Options(50, 65536, 1048576)
    out = export_hcm(hcm)
    assert out["codec_type"] == "HTTP2"
    assert out["http2_protocol_options"] == {
        "max_concurrent_streams": 50,
        "initial_stream_window_size": 65536,
        "initial_connection_window_size": 1048576,
    }


def test_default_exports_no_http2_options(tmp_path: Path) -> None:
    hcm = load(tmp_path, render())
    assert hcm.codec_type is CodecType.AUTO and hcm.http2 is None
    assert "http2_protocol_options" not in export_hcm(hcm)


@pytest.mark.parametrize(
    ("options", "path", "words"),
    [
        ("{allow_connect: true}", "http2_protocol_options.allow_connect", "allow_connect"),
        ("{initial_stream_window_size: 100}", "http2_protocol_options.initial_stream_window_size", ">= 65535"),
        ("{max_concurrent_streams: 0}", "http2_protocol_options.max_concurrent_streams", ">= 1"),
    ],
)
def test_other_http2_options_are_refused(tmp_path: Path, options: str, path: str, words: str) -> None:
    e = error(tmp_path, render(**{"codec_type: AUTO": f"codec_type: AUTO\n          http2_protocol_options: {options}"}))
    assert e.path.endswith(path) and words in str(e), (e.path, str(e))


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.test")]


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        (BASE, True),
        ([*BASE, (b"host", b"other.test")], True),  # Envoy uses :authority
        ([*BASE[:3], (b"host", b"a.test")], True),
        ([*BASE, (b"te", b"trailers")], True),
        ([(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"), BASE[3]], True),
        ([(b":method", b"CONNECT"), BASE[3]], True),
        (BASE[:3], False),
        (BASE[1:], False),
        ([BASE[0], *BASE[2:]], False),
        ([*BASE[:2], *BASE[3:]], False),
        ([*BASE, (b":path", b"/x")], False),
        ([*BASE, (b":status", b"200")], False),
        ([BASE[0], (b"x", b"1"), *BASE[1:]], False),
        ([*BASE, (b"X-Up", b"1")], False),
        ([*BASE, (b"connection", b"close")], False),
        ([*BASE, (b"transfer-encoding", b"chunked")], False),
        ([*BASE, (b"te", b"gzip")], False),
        ([*BASE[:2], (b":path", b""), BASE[3]], False),
        ([*BASE[:2], (b":path", b"abc"), BASE[3]], False),
        ([(b":method", b"CONNECT"), BASE[3], (b":path", b"/")], False),
    ],
)
def test_malformed(headers: list[tuple[bytes, bytes]], ok: bool) -> None:
    assert (malformed(headers) is None) is ok, malformed(headers)
