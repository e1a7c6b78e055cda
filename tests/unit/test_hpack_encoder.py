"""StaticEncoder: HPACK blocks any decoder reads, no dynamic table, h2's outbound normalisation.

Decoded here with the hpack library's Decoder (an independent implementation of RFC 7541);
tests/conformance/test_http2.py decodes them with curl's and h2load's nghttp2 on every answer.
"""

from __future__ import annotations

from hpack import Decoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st

from pysidecar.proxy.http.hpack_encoder import StaticEncoder, encode_field


def _decode(decoder: Decoder, block: bytes) -> list[HeaderTuple]:
    return list(decoder.decode(block, raw=True))


def test_a_response_head_decodes_and_leaves_the_dynamic_table_empty() -> None:
    head = [
        (b":status", b"200"),
        (b"Content-Type", b"text/html"),
        (b"content-length", b"1024"),
        (b"x-custom", b"v" * 300),
        (b"set-cookie", b"a=b"),
        (b"date", b"Mon, 07 Dec 2026 21:00:00 GMT"),
    ]
    enc, dec = StaticEncoder(), Decoder()
    for _ in range(3):  # the second and third blocks come from the cache
        assert _decode(dec, enc.encode(head)) == [(n.lower(), v) for n, v in head]
    assert len(dec.header_table.dynamic_entries) == 0
    assert dec.header_table.maxsize == 0  # the size update to 0 was read


def test_static_entries_are_one_byte_and_sensitive_fields_never_indexed() -> None:
    assert encode_field(b":status", b"200") == bytes([0x80 | 8])
    assert encode_field(b":status", b"404") == bytes([0x80 | 13])
    dec = Decoder()
    (auth,) = _decode(dec, encode_field(b"authorization", b"secret"))
    assert isinstance(auth, NeverIndexedHeaderTuple) and auth == (b"authorization", b"secret")
    (cookie,) = _decode(dec, encode_field(b"cookie", b"k=v"))
    assert isinstance(cookie, NeverIndexedHeaderTuple)
    (plain,) = _decode(dec, encode_field(b"etag", b'"abc"'))
    assert not isinstance(plain, NeverIndexedHeaderTuple)


def test_connection_specific_fields_are_never_sent() -> None:
    head = [
        (b":status", b"200"),
        (b"Connection", b"close"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"proxy-connection", b"x"),
        (b"te", b"gzip"),
        (b"te", b"trailers"),
        (b"x-kept", b"1"),
    ]
    assert _decode(Decoder(), StaticEncoder().encode(head)) == [
        (b":status", b"200"),
        (b"te", b"trailers"),
        (b"x-kept", b"1"),
    ]


def test_the_table_size_update_follows_the_peers_settings() -> None:
    enc, dec = StaticEncoder(), Decoder()
    _decode(dec, enc.encode([(b":status", b"200")]))
    assert enc.encode([(b":status", b"200")])[0] == 0x88  # no update owed
    enc.header_table_size = 0  # h2 does this when the peer's SETTINGS_HEADER_TABLE_SIZE changes
    dec.max_allowed_table_size = 0
    block = enc.encode([(b":status", b"200")])
    assert block[0] == 0x20
    assert _decode(dec, block) == [(b":status", b"200")]


_token = st.binary(min_size=1, max_size=40).map(lambda b: bytes(c % 26 + 97 for c in b))
_value = st.binary(max_size=200).map(lambda b: bytes(32 + c % 95 for c in b))


@given(st.lists(st.tuples(_token, _value), max_size=30))
def test_any_head_round_trips(head: list[tuple[bytes, bytes]]) -> None:
    dropped = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
    want = [(n, v) for n, v in head if n not in dropped and not (n == b"te" and v != b"trailers")]
    assert _decode(Decoder(), StaticEncoder().encode(head)) == want
