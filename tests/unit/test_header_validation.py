"""header_validation: the one set of field rules every codec applies (RFC 9110 / RFC 9113 §8.2.1,
nghttp2's and Envoy's character classes), and a seeded fuzz showing that whatever passes the
upstream encoder's check parses back, by a real HTTP/1 parser (httptools), as exactly the one
request that was meant: no CR / LF / NUL / colon in a name can frame a second request."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pysidecar.proxy.http.header_validation import (
    authority_problem,
    h1_request_problem,
    h2_request_problem,
    hcm_path_reply,
    is_token,
    name_problem,
    path_problem,
    upstream_head_problem,
    value_ok,
)
from pysidecar.proxy.http.http1.wire import encode_request_head

BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a"), (b":authority", b"a.test")]


def with_pseudo(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, value if n == name else v) for n, v in BASE]


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        (BASE, True),
        (with_pseudo(b":path", b"/a\r\nGET /b HTTP/1.1"), False),
        (with_pseudo(b":path", b"/a b"), False),
        (with_pseudo(b":path", b"/a\x00"), False),
        (with_pseudo(b":path", b"/a\tb"), False),
        (with_pseudo(b":path", b"/a\x7f"), False),
        (with_pseudo(b":path", b"/a\xe9"), True),  # obs-text: Envoy 1.40 routes it (404)
        (with_pseudo(b":path", b"/a#b"), True),  # the connection manager's 400 (hcm_path_reply)
        (with_pseudo(b":method", b"GE T"), False),
        (with_pseudo(b":method", b"GET\r\n"), False),
        (with_pseudo(b":method", b""), False),
        (with_pseudo(b":method", b"FO(O"), False),
        (with_pseudo(b":method", b"get"), True),
        (with_pseudo(b":method", b"FOO!"), True),
        (with_pseudo(b":authority", b"a.test\r\nx: y"), False),
        (with_pseudo(b":authority", b"a test"), False),
        (with_pseudo(b":authority", b"a.test/x"), False),
        (with_pseudo(b":authority", b"u@a.test"), False),
        (with_pseudo(b":authority", b""), False),
        (with_pseudo(b":authority", b"a\"b"), False),
        (with_pseudo(b":authority", b"[::1]:80"), True),
        (with_pseudo(b":authority", b"a%2etest:8080"), True),
        (with_pseudo(b":scheme", b"ht tp"), False),
        (with_pseudo(b":scheme", b"foo"), True),
        ([*BASE, (b"x a", b"1")], False),
        ([*BASE, (b"x:a", b"1")], False),
        ([*BASE, (b"", b"1")], False),
        ([*BASE, (b"x\xe9", b"1")], False),
        ([*BASE, (b"x{a}", b"1")], False),
        ([*BASE, (b"x-a", b"1\r\nx-b: 2")], False),
        ([*BASE, (b"x-a", b"1\n")], False),
        ([*BASE, (b"x-a", b"1\r")], False),
        ([*BASE, (b"x-a", b"\x00")], False),
        ([*BASE, (b"x-a", b"\x01")], False),
        ([*BASE, (b"x-a", b"\x7f")], False),
        ([*BASE, (b"x-a", b"1\t2")], True),
        ([*BASE, (b"x-a", b" 1 ")], True),  # Envoy 1.40 takes surrounding spaces (checked)
        ([*BASE, (b"x-a", b"\xe9")], True),
        ([*BASE[:3], (b"host", b"a b")], False),
        ([*BASE, (b"host", b"a b")], False),
    ],
)
def test_h2_request_problem(headers: list[tuple[bytes, bytes]], ok: bool) -> None:
    """Each verdict is Envoy 1.40's (tests/conformance/test_hardening.py runs them on both)."""
    assert (h2_request_problem(headers) is None) is ok, h2_request_problem(headers)


def test_names_values_tokens() -> None:
    assert is_token(b"GET") and is_token(b"x-a_b.c~") and not is_token(b"") and not is_token(b"a b")
    assert name_problem(b"X-Up", lower_only=True) == "upper-case header name b'X-Up'"
    assert name_problem(b"X-Up", lower_only=False) is None
    assert name_problem(b"x:a", lower_only=False) is not None
    assert value_ok(b"a\tb \xff") and not value_ok(b"a\x0bb")
    assert path_problem(b"*", b"OPTIONS") is None and path_problem(b"*", b"GET") is not None
    assert authority_problem(b"u@a") is None and authority_problem(b"u@a", h2=True) is not None


@pytest.mark.parametrize(
    ("method", "url", "version", "headers", "expected"),
    [
        (b"GET", b"/c", "2.0", [(b"host", b"x")], (426, "low_version")),
        (b"GET", b"/c", "0.9", [], (426, "low_version")),
        (b"GET", b"/c", "1.1", [(b"host", b"x y")], (400, "http.invalid_authority")),
        (b"GET", b"/c", "1.1", [(b"host", b"x/y")], (400, "http.invalid_authority")),
        (b"GET", b"/c", "1.1", [(b"host", b"u@x")], None),
        (b"GET", b"/c", "1.1", [(b"host", b"")], None),  # the stream's missing-host answer
        (b"GET", b"http://x\"y/a", "1.1", [(b"host", b"x")], (400, "http.invalid_authority")),
        (b"GET", b"*", "1.1", [(b"host", b"x")], (400, "http1.invalid_url")),
        (b"OPTIONS", b"*", "1.1", [(b"host", b"x")], None),
        (b"GET", b"/c", "1.0", [], None),
    ],
)
def test_h1_request_problem(
    method: bytes, url: bytes, version: str, headers: list[tuple[bytes, bytes]], expected: object
) -> None:
    assert h1_request_problem(method, url, version, headers) == expected


def test_hcm_path_reply() -> None:
    assert hcm_path_reply(b"/a#b") == (400, "path_normalization_failed")
    assert hcm_path_reply(b"*") == (404, "absolute_path_rejected")
    assert hcm_path_reply(b"/a?b#") == (400, "path_normalization_failed")
    assert hcm_path_reply(b"/a?b") is None


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/a HTTP/1.1\r\nhost: x\r\n\r\nGET /smuggled", [(b"host", b"x")]),
        (b"GET", b"/a\nb", [(b"host", b"x")]),
        (b"GET", b"/a b", [(b"host", b"x")]),
        (b"GET /x HTTP/1.1\r\n\r\nGET", b"/", [(b"host", b"x")]),
        (b"GET", b"/", [(b"host", b"x\r\nx-b: 1")]),
        (b"GET", b"/", [(b"host", b"x\ny")]),
        (b"GET", b"/", [(b"host", b"x\ry")]),
        (b"GET", b"/", [(b"host", b"x\x00")]),
        (b"GET", b"/", [(b"x-a: 1\r\nx-b", b"2")]),
        (b"GET", b"/", [(b"x-a:b", b"2")]),
        (b"GET", b"/", [(b"x a", b"2")]),
        (b"GET", b"/", [(b"", b"2")]),
        (b"GET", b"/", [(b"x-a", b"\x01")]),
    ],
)
def test_upstream_head_problem_refuses(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    head = encode_request_head(method, target, headers)
    assert upstream_head_problem(method, target, headers, head) is not None


def test_upstream_head_problem_passes_a_normal_head() -> None:
    headers = [(b"host", b"a.test"), (b"x-a", b"v\t\xe9 "), (b"x-request-id", b"1")]
    head = encode_request_head(b"POST", b"/a?b=c%20d", headers)
    assert upstream_head_problem(b"POST", b"/a?b=c%20d", headers, head) is None


class _Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, list[tuple[bytes, bytes]]]] = []
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.messages.append((self.url, self.headers))
        self.url, self.headers = b"", []


_BYTES = st.binary(min_size=0, max_size=12)
_NAMES = st.one_of(st.sampled_from([b"host", b"x-a", b"content-type"]), _BYTES)
_VALUES = st.one_of(st.sampled_from([b"v", b"a b", b"\xe9"]), _BYTES)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    method=st.one_of(st.sampled_from([b"GET", b"POST"]), _BYTES),
    target=st.one_of(st.sampled_from([b"/", b"/a?b"]), _BYTES.map(lambda b: b"/" + b)),
    headers=st.lists(st.tuples(_NAMES, _VALUES), min_size=1, max_size=5),
)
def test_fuzz_what_passes_the_encoder_check_is_one_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Seeded (derandomized) fuzz: any head the encoder check lets through is read by llhttp as
    one request with the same target and the same header names, in order."""
    head = encode_request_head(method, target, headers)
    if upstream_head_problem(method, target, headers, head) is not None:
        return
    seen = _Collect()
    parser = httptools.HttpRequestParser(seen)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT / Upgrade: the head still parsed whole (checked below)
    except httptools.HttpParserError:
        return  # llhttp refusing what we would send is safe (the upstream answers 400)
    assert len(seen.messages) <= 1
    if seen.messages:
        url, got = seen.messages[0]
        assert url == target
        assert [n.lower() for n, _ in got] == [n.lower() for n, _ in headers]


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    pseudo=st.lists(
        st.tuples(st.sampled_from([b":method", b":path", b":authority", b":scheme"]), _BYTES), max_size=5
    ),
    regular=st.lists(st.tuples(_NAMES, _VALUES), max_size=4),
)
def test_fuzz_h2_blocks_that_pass_carry_no_line_break(
    pseudo: list[tuple[bytes, bytes]], regular: list[tuple[bytes, bytes]]
) -> None:
    """Any HTTP/2 header block h2_request_problem accepts has no byte that could end an
    HTTP/1 line or name anywhere, so what the stream builds from it is safe to encode."""
    block = [*pseudo, *regular]
    if h2_request_problem(block) is not None:
        return
    for n, v in block:
        assert not any(c in n + v for c in b"\r\n\x00")
        assert b":" not in n[1:] and b" " not in n
