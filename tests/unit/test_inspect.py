"""http_inspector and tls_inspector over first bytes."""

from __future__ import annotations

import contextlib
import ssl

from pysidecar.proxy.inspect import (
    H2C_PREFACE,
    NEED_MORE,
    TlsHello,
    decide,
    inspect_http,
    inspect_tls,
)


def client_hello(sni: str | None, alpn: list[str]) -> bytes:
    ctx = ssl.create_default_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_http_versions_and_h2c() -> None:
    assert inspect_http(b"GET / HTTP/1.1\r\n") == "http/1.1"
    assert inspect_http(b"POST /x HTTP/1.0\r\nHost: a\r\n") == "http/1.0"
    assert inspect_http(H2C_PREFACE) == "h2c"
    assert inspect_http(b"PRI * HTTP") == NEED_MORE
    assert inspect_http(b"GE") == NEED_MORE
    assert inspect_http(b"GET /long/path") == NEED_MORE
    assert inspect_http(b"\x00\x01binary") is None
    assert inspect_http(b"FOO / HTTP/1.1\r\n") is None
    assert inspect_http(b"GET / SPDY/3\r\n") is None


def test_tls_client_hello_sni_and_alpn() -> None:
    hello = client_hello("Api.Example.com", ["h2", "http/1.1"])
    got = inspect_tls(hello)
    assert got == TlsHello("api.example.com", ("h2", "http/1.1"))
    assert inspect_tls(hello[:3]) == NEED_MORE
    assert inspect_tls(hello[:60]) == NEED_MORE
    assert inspect_tls(b"GET / HTTP/1.1\r\n") is None
    no_sni = inspect_tls(client_hello(None, []))
    assert isinstance(no_sni, TlsHello) and no_sni.server_name == "" and no_sni.alpn == ()


def test_decide_runs_tls_then_http() -> None:
    tls = decide(client_hello("a.b", ["istio-http/1.1"]), tls=True, http=True)
    assert (
        tls is not None
        and tls.transport_protocol == "tls"
        and tls.application_protocols == ("istio-http/1.1",)
    )
    plain = decide(b"GET / HTTP/1.1\r\n", tls=True, http=True)
    assert plain is not None and plain.application_protocols == ("http/1.1",)
    assert decide(b"GE", tls=True, http=True) is None
    server_first = decide(b"", tls=True, http=True, eof=True)  # the timeout passed, no bytes
    assert server_first is not None and server_first.application_protocols == ()
    mysql = decide(b"\x4a\x00\x00\x00\x0a8.0", tls=True, http=True)
    assert mysql is not None and mysql.transport_protocol == "raw_buffer" and mysql.http is None
