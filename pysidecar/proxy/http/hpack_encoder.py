"""The HPACK encoder of the HTTP/2 downstream codec: response header blocks without a dynamic table.

Why: the h2 library's encoder searches its dynamic table linearly for every header and h2 then
normalises and validates every header it sends, generator by generator: a third of the worker's
time under h2load (bench/README.md). A response head is mostly the same few fields over and over
(the upstream's server-made headers, the HCM's own), so each field is encoded once, on its own,
and the bytes are reused.

Promises:
- `encode(headers)` returns an HPACK header block (RFC 7541) any decoder reads: a field of the
  static table with its value is its index; otherwise a literal *without indexing* (or *never
  indexed* for authorization, proxy-authorization and cookie, as h2 marks them), its name by
  static index when there is one, Huffman-coded when shorter. Nothing enters the peer's dynamic
  table, so every field's encoding is independent of the others and of the connection: it is
  cached once per process (bounded).
- Our dynamic table size is 0: the first block, and the first after the peer's
  SETTINGS_HEADER_TABLE_SIZE changes (h2 sets `header_table_size`), starts with a dynamic table
  size update to 0, which is within any limit the peer sets.
- What h2's outbound normalisation did is done here: names lower-cased, connection-specific
  fields (RFC 9113 §8.2.2) never sent. The HTTP/1 upstream codec lower-cases names already and
  the HCM strips hop-by-hop fields (headers.py); this is the backstop. Values come from the
  upstream codecs, which refuse CR, LF and NUL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

_STATIC: Final = HeaderTable.STATIC_TABLE
# (name, value) → index of an exact static entry; name → index of its first static entry.
_FULL: Final[dict[tuple[bytes, bytes], int]] = {}
_NAME: Final[dict[bytes, int]] = {}
for _i, (_n, _v) in enumerate(_STATIC, start=1):
    _FULL.setdefault((_n, _v), _i)
    _NAME.setdefault(_n, _i)

_NEVER_INDEXED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_CACHE_LIMIT: Final = 4096  # distinct fields kept; a new `date` each second, a few others
_TABLE_SIZE_ZERO: Final = b"\x20"  # 001 00000: dynamic table size update to 0
_huffman: Final = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_cache: Final[dict[tuple[bytes, bytes], bytes]] = {}


def _string(data: bytes) -> bytes:
    """An HPACK string literal: Huffman-coded when that is shorter."""
    coded = _huffman.encode(data)
    if len(coded) < len(data):
        length = encode_integer(len(coded), 7)
        length[0] |= 0x80
        return bytes(length) + coded
    return bytes(encode_integer(len(data), 7)) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field's representation (empty for a connection-specific field)."""
    name = name.lower()
    if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
        return b""
    full = _FULL.get((name, value))
    if full is not None:
        first = encode_integer(full, 7)
        first[0] |= 0x80
        return bytes(first)
    flag = 0x10 if name in _NEVER_INDEXED else 0x00  # 0001xxxx never indexed, 0000xxxx without
    index = _NAME.get(name, 0)
    head = encode_integer(index, 4)
    head[0] |= flag
    if index:
        return bytes(head) + _string(value)
    return bytes(head) + _string(name) + _string(value)


class StaticEncoder:
    """Stands in for hpack.Encoder on an h2 connection (`conn.encoder`): `encode` and the
    `header_table_size` h2 sets when the peer's SETTINGS change it."""

    def __init__(self) -> None:
        self.size_update = True  # owed at the start of the next block
        self._table_size = 4096

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self.size_update = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = _cache
        parts: list[bytes] = []
        if self.size_update:
            self.size_update = False
            parts.append(_TABLE_SIZE_ZERO)
        for name, value in headers:
            key = (name, value)
            part = cache.get(key)
            if part is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                part = cache[key] = encode_field(name, value)
            parts.append(part)
        return b"".join(parts)
