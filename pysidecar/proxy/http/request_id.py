"""x-request-id: a fresh UUID4 for a request that came without one (Envoy's UUID request id
extension).

Promises: `request_id()` is a random (version 4, RFC 4122 variant) UUID in its text form, as
bytes. Like Envoy (RandomGeneratorImpl::uuid), random bytes are drawn from the OS in batches:
os.urandom per request was a getrandom(2) per request.
"""

from __future__ import annotations

import os

_UUID_BATCH = 256 * 16
_V4_MASK = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_V4_BITS = (0x8000 << 48) | (4 << 76)  # RFC 4122 variant, version 4


class _RandomBatch:
    __slots__ = ("data", "pos")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0

    def take16(self) -> bytes:
        pos = self.pos
        if pos >= len(self.data):
            self.data = os.urandom(_UUID_BATCH)
            pos = 0
        self.pos = pos + 16
        return self.data[pos : pos + 16]


_random = _RandomBatch()


def request_id() -> bytes:
    """A fresh x-request-id: a random (version 4) UUID in its text form."""
    h = ((int.from_bytes(_random.take16()) & _V4_MASK) | _V4_BITS).to_bytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
