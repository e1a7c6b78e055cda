"""x-request-id: a fresh UUID4 for a request that came without one (Envoy's UUID request id
extension).

Promises: `request_id()` is a random (version 4, RFC 4122 variant) UUID in its text form, as
bytes. Like Envoy (RandomGeneratorImpl::uuid), random bytes are drawn from the OS in batches:
os.urandom per request was a getrandom(2) per request.
"""

from __future__ import annotations

import os

_UUID_BATCH = 256 * 16


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
    b = bytearray(_random.take16())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
