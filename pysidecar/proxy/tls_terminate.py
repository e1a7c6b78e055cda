"""Downstream TLS termination: the handshake between filter chain choice and the network filter.

Promises:
- `terminate(loop, transport, context, initial)` upgrades an accepted connection with the
  event loop's own TLS (`loop.start_tls(..., server_side=True)`) using the chain's SSLContext
  (built at config load), and returns the decrypted transport plus whatever application data
  and EOF arrived before the network filter could take over.
- The bytes tls_inspector already read (the ClientHello) are handed to the TLS protocol before
  its handshake starts, so the client's hello is read exactly once.
- A failed handshake (a client without the required certificate, one that does not verify,
  not TLS at all, a timeout) raises `HandshakeFailed` with Envoy's stat to count; the
  connection is closed by then.
- No splice, no peeking: everything after the handshake goes through the TLS transport.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

# How long a client may take over its handshake (asyncio's and uvloop's default).
HANDSHAKE_TIMEOUT = 60.0


class HandshakeFailed(Exception):
    def __init__(self, stat: str, cause: BaseException) -> None:
        super().__init__(f"TLS handshake failed: {cause}")
        self.stat = stat
        self.cause = cause


class Handshaking(asyncio.Protocol):
    """The TLS transport's protocol until the network filter takes it: TLS 1.3 clients send
    their first request together with Finished, so data may arrive before that."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _feed(protocol: Any, data: bytes) -> None:
    """Give `data` to a (buffered) TLS protocol as if the socket had just delivered it."""
    view = memoryview(data)
    while view:
        buf = protocol.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


def failure_stat(exc: BaseException) -> str:
    """Envoy's listener ssl stat for a failed handshake."""
    reason = getattr(exc, "reason", "") or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "fail_verify_no_cert"
    if reason == "CERTIFICATE_VERIFY_FAILED" or isinstance(exc, ssl.SSLCertVerificationError):
        return "fail_verify_error"
    return "connection_error"


async def terminate(
    loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, context: ssl.SSLContext, initial: bytes
) -> tuple[asyncio.Transport, Handshaking]:
    holder = Handshaking()
    starting = asyncio.ensure_future(
        loop.start_tls(transport, holder, context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    )
    if initial:
        # start_tls installs its TLS protocol on the transport in its first step, which runs
        # before ours resumes (the ready queue is FIFO); the handshake itself starts only in a
        # callback it schedules, so the hello is in place before it is read.
        while not hasattr(transport.get_protocol(), "buffer_updated") and not starting.done():
            await asyncio.sleep(0)
        if not starting.done():
            _feed(transport.get_protocol(), initial)
    try:
        tls = await starting
    except Exception as e:  # whatever the handshake raised, the connection is over
        transport.abort()
        raise HandshakeFailed(failure_stat(e), e) from e
    assert tls is not None
    return tls, holder
