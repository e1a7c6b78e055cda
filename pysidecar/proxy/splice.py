"""tcp_proxy's splice(2) path for streams: bytes move socket → pipe → socket inside the kernel.

A tcp_proxy connection starts on the Protocol path (tcp_proxy.py: uvloop reads, the session
writes). When one read brings a stream's worth (STREAM_CHUNK) and nothing needs to see the
bytes (both ends plain TCP sockets, no TLS), the session hands both sockets to a SpliceRelay.
Why not from the first byte: measured on loopback (bench/README.md, perf), a 1 KiB
request/response costs the kernel 2-13% more through splice's pipe round trip than through
read/write, and uvloop's C read/write loop costs less user time than any per-message Python;
a stream costs ~2x less CPU per GB spliced. Envoy cannot splice; HAProxy and Go's io.Copy do.

Promises:
- Exact bytes in order, both directions. Per direction, one pipe holds what was read from the
  source and not yet written to the destination; nothing is read while the pipe holds bytes,
  so at most one pipe's capacity (64 KiB, or a grown pipe: never past the listener's
  per_connection_buffer_limit_bytes) is buffered per direction: Envoy's watermark bound, kept
  by the kernel instead of a Python buffer. A blocked destination stops reading the source
  (tcp downstream_flow_control_paused_reading_total / cluster
  upstream_flow_control_paused_reading_total count it, as on the Protocol path) until the
  destination drains.
- Half-close: EOF from one side, once the pipe is flushed, becomes shutdown(SHUT_WR) towards
  the other; the session closes when both directions are done, or at once on an error (reset,
  broken pipe) from either side.
- Byte stats (tcp.*.downstream_cx_rx/tx_bytes_total, cluster upstream_cx_rx/tx_bytes_total) and
  the session's rx/tx totals (StreamInfo bytes, idle timeout) are counted as bytes enter the
  pipe (rx) and leave it (tx), continuing the Protocol path's counts.
- `SpliceRelay.take_over` either takes both sockets over completely or changes nothing (the
  session stays on the Protocol path): only with both write buffers empty and both pipes in
  hand. Each socket is dup'ed and its transport closed (closing one of two fds of a socket
  sends no FIN; libuv removes its own fd from epoll on close).
- Bounded resources: at most MAX_SESSIONS spliced sessions per worker (a pipe costs pipe pages
  that Linux limits per user: fs.pipe-user-pages-soft); empty default-sized pipes of closed
  sessions are kept in a small pool for the next ones.
- A direction whose source fills its pipe in one read grows the pipe (F_SETPIPE_SZ) to
  GROWN_PIPE, never past the listener's buffer limit, for at most MAX_GROWN pipes per worker
  (a quarter of an unprivileged user's default pipe budget): fewer, larger splices per GB (2 per
  MiB instead of 2 per 64 KiB). A refused growth (the user's pipe budget spent: EPERM) leaves
  the pipe as it was; a grown pipe is closed, not pooled.
- Steady state makes no syscall beyond the splices themselves: readers stay registered, a short
  read returns without trying again (no EAGAIN), the pipe is drained before the next read.
- `PYSIDECAR_SPLICE=0` in the environment turns the splice path off (the bench compares both).
- Compiled by mypyc (pysidecar/native.py): _Flow and SpliceRelay are native classes; the
  per-chunk code calls os.splice positionally and touches only its own attributes, the session's
  byte totals and the two stats blocks it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from pysidecar.observe.stats import ClusterStats, TcpProxyStats


class RelaySession(Protocol):
    """What the relay needs of its tcp_proxy session (TcpProxySession): its loop, limit, byte
    totals and stats blocks, and close() for when both directions are done or one failed."""

    loop: asyncio.AbstractEventLoop
    limit: int
    rx_bytes: int
    tx_bytes: int
    stats: TcpProxyStats
    cluster_stats: ClusterStats | None

    def close(self) -> None: ...


ENABLED: bool = hasattr(os, "splice") and os.environ.get("PYSIDECAR_SPLICE", "1") != "0"
# Linux's default pipe size. Larger pipes move more per wake-up, but count against the proxy
# user's fs.pipe-user-pages-soft (16384 pages), beyond which Linux hands out 2-page pipes.
PIPE_SIZE: Final = int(os.environ.get("PYSIDECAR_SPLICE_PIPE", 64 * 1024))
# Below this, a pipe (shrunk by the kernel after the user's pipe budget ran out) is not worth it.
MIN_PIPE: Final = 64 * 1024
MAX_SESSIONS: Final = 512  # per worker: 2 pipes each, 16 pages a pipe → at most 16384 pages
# A read at least this big hands the session to the relay (uvloop reads up to 256 KiB at once;
# request/response messages of a few KiB never get here).
STREAM_CHUNK: Final = 64 * 1024
POOL_MAX: Final = 64  # empty pipes kept for reuse (connect-heavy loads skip pipe2 + fcntl)
# Reads per wake-up when the source keeps filling the pipe: fewer trips through the loop for
# bulk transfers, still fair to other connections.
MAX_READS_PER_WAKEUP: Final = 4
# A bulk direction's pipe: 1 MiB is Linux's pipe-max-size, the most an unprivileged user may
# ask for. Measured on loopback (bench bulk): 64 KiB → 1 MiB pipes take the splices per GB from
# ~32,600 to ~2,000 and the proxy's CPU per GB down by a fifth.
GROWN_PIPE: Final = int(os.environ.get("PYSIDECAR_SPLICE_PIPE_MAX", 1024 * 1024))
MAX_GROWN: Final = 16  # grown pipes per worker: 16 x 256 pages = 4096 of the 16384-page budget

_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

_pool: list[tuple[int, int, int]] = []
active_sessions = 0
grown_pipes = 0


def _open_pipe() -> tuple[int, int, int] | None:
    """(read fd, write fd, capacity), from the pool or new; None if no useful pipe can be had."""
    if _pool:
        return _pool.pop()
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    cap = MIN_PIPE
    try:
        if PIPE_SIZE != 64 * 1024:
            cap = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        else:
            cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    except OSError:
        cap = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    if cap < MIN_PIPE:
        os.close(r)
        os.close(w)
        return None
    return r, w, cap


def _release_pipe(pipe: tuple[int, int, int], empty: bool) -> None:
    if empty and len(_pool) < POOL_MAX:
        _pool.append(pipe)
        return
    os.close(pipe[0])
    os.close(pipe[1])


def grown_size(cap: int, limit: int) -> int:
    """The size a bulk direction's pipe grows to: GROWN_PIPE, but never past the listener's
    buffer limit (Linux rounds a pipe up to a power of two pages: the largest power of two that
    fits); `cap` when that is no bigger."""
    want = min(GROWN_PIPE, limit)
    size = cap
    while size * 2 <= want:
        size *= 2
    return size


class _Detached(asyncio.Protocol):
    """Given to the transports we let go of: their events no longer matter."""

    def eof_received(self) -> bool:
        return False


_DETACHED = _Detached()


class _Flow:
    """One direction: src socket → pipe → dst socket."""

    __slots__ = (
        "cap",
        "cluster_stats",
        "done",
        "dst",
        "dst_sock",
        "eof",
        "grown",
        "inpipe",
        "loop",
        "may_grow",
        "pipe",
        "r",
        "reading",
        "relay",
        "session",
        "src",
        "stats",
        "upward",
        "w",
        "waiting",
    )

    def __init__(self, relay: SpliceRelay, pipe: tuple[int, int, int], upward: bool) -> None:
        self.relay = relay
        self.session = relay.session
        self.loop = relay.loop
        self.pipe = pipe
        self.r, self.w, self.cap = pipe
        self.upward = upward  # downstream → upstream
        self.src = -1
        self.dst = -1
        self.dst_sock: socket.socket | None = None
        # Held here, not looked up per chunk: the session's stats blocks (set by start()).
        self.stats: TcpProxyStats | None = None
        self.cluster_stats: ClusterStats | None = None
        self.inpipe = 0
        self.eof = False
        self.done = False
        self.reading = False
        self.waiting = False
        self.may_grow = True  # one try per direction, at its first full pipe
        self.grown = False

    def start(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.stats = self.session.stats
        self.cluster_stats = self.session.cluster_stats
        self.loop.add_reader(self.src, self.readable)
        self.reading = True

    def readable(self) -> None:
        relay = self.relay
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                n = os.splice(self.src, self.w, self.cap - self.inpipe, None, None, _FLAGS)
            except BlockingIOError:
                return
            except OSError:
                relay.fail()
                return
            if n == 0:
                self.eof = True
                if self.reading:
                    self.loop.remove_reader(self.src)
                    self.reading = False
                self.flush()
                return
            self.inpipe += n
            if self.upward:
                self.session.rx_bytes += n
                self.stats.downstream_cx_rx_bytes_total += n  # type: ignore[union-attr]
            else:
                self.cluster_stats.upstream_cx_rx_bytes_total += n  # type: ignore[union-attr]
            full = self.inpipe == self.cap
            if full and self.may_grow:
                self.grow()
            self.flush()
            # A short read emptied the socket's queue; a blocked destination stopped reading.
            if not full or not self.reading or relay.closed:
                return

    def grow(self) -> None:
        """The source filled the pipe: a bulk stream. Give it a bigger pipe if the budget allows."""
        global grown_pipes
        self.may_grow = False
        size = grown_size(self.cap, self.session.limit)
        if size <= self.cap or grown_pipes >= MAX_GROWN:
            return
        try:
            self.cap = fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            return  # EPERM: the user's pipe budget is spent; the pipe stays as it was
        self.grown = True
        grown_pipes += 1

    def flush(self) -> None:
        """Write the pipe out; on a full destination wait for it and stop reading the source."""
        relay = self.relay
        while self.inpipe:
            try:
                m = os.splice(self.r, self.dst, self.inpipe, None, None, _FLAGS)
            except BlockingIOError:
                if not self.waiting:
                    if self.reading:
                        self.loop.remove_reader(self.src)
                        self.reading = False
                        if self.upward:
                            self.stats.downstream_flow_control_paused_reading_total += 1  # type: ignore[union-attr]
                        else:
                            self.cluster_stats.upstream_flow_control_paused_reading_total += 1  # type: ignore[union-attr]
                    self.loop.add_writer(self.dst, self.flush)
                    self.waiting = True
                return
            except OSError:
                relay.fail()
                return
            self.inpipe -= m
            if self.upward:
                self.cluster_stats.upstream_cx_tx_bytes_total += m  # type: ignore[union-attr]
            else:
                self.session.tx_bytes += m
                self.stats.downstream_cx_tx_bytes_total += m  # type: ignore[union-attr]
        if self.waiting:
            self.loop.remove_writer(self.dst)
            self.waiting = False
        if self.eof:
            if not self.done:
                self.done = True
                # A peer that is gone already: the other direction will see it.
                with contextlib.suppress(OSError):
                    self.dst_sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
                relay.flow_done()
        elif not self.reading and not relay.closed:
            self.loop.add_reader(self.src, self.readable)
            self.reading = True
            if self.upward:
                self.stats.downstream_flow_control_resumed_reading_total += 1  # type: ignore[union-attr]
            else:
                self.cluster_stats.upstream_flow_control_resumed_reading_total += 1  # type: ignore[union-attr]

    def stop(self) -> None:
        global grown_pipes
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False
        if self.waiting:
            self.loop.remove_writer(self.dst)
            self.waiting = False
        if self.grown:
            grown_pipes -= 1  # the pool keeps default-sized pipes only
        _release_pipe(self.pipe, empty=self.inpipe == 0 and not self.grown)


class SpliceRelay:
    """A tcp_proxy session's bytes, both directions, through two pipes."""

    __slots__ = ("closed", "down", "loop", "session", "to_down", "to_up", "up")

    def __init__(self, session: RelaySession, down: socket.socket, up: socket.socket) -> None:
        self.session = session
        self.loop = session.loop
        self.down = down
        self.up = up
        self.closed = False
        self.to_up: _Flow | None = None
        self.to_down: _Flow | None = None

    @classmethod
    def take_over(
        cls, session: RelaySession, down: asyncio.Transport, up: asyncio.Transport
    ) -> SpliceRelay | None:
        """Take both sockets off their transports and splice from now on, or return None and
        change nothing."""
        global active_sessions
        if not ENABLED or active_sessions >= MAX_SESSIONS:
            return None
        socks: list[Any] = [down.get_extra_info("socket"), up.get_extra_info("socket")]
        for transport, sock in zip((down, up), socks, strict=True):
            if (
                sock is None
                or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_STREAM
                or transport.get_extra_info("sslcontext") is not None
                or transport.get_write_buffer_size()
            ):
                return None
        up_pipe = _open_pipe()
        if up_pipe is None:
            return None
        down_pipe = _open_pipe()
        if down_pipe is None:
            _release_pipe(up_pipe, empty=True)
            return None
        try:
            down_sock = socket.socket(fileno=os.dup(socks[0].fileno()))
        except OSError:
            _release_pipe(up_pipe, empty=True)
            _release_pipe(down_pipe, empty=True)
            return None
        try:
            up_sock = socket.socket(fileno=os.dup(socks[1].fileno()))
        except OSError:
            down_sock.close()  # a dup: the connection stays open on the transport's fd
            _release_pipe(up_pipe, empty=True)
            _release_pipe(down_pipe, empty=True)
            return None
        # The transports let go of their fds; our dups keep the connections open.
        for transport in (down, up):
            transport.set_protocol(_DETACHED)
            transport.close()
        down_sock.setblocking(False)
        up_sock.setblocking(False)
        active_sessions += 1
        relay = cls(session, down_sock, up_sock)
        relay.to_up = _Flow(relay, up_pipe, upward=True)
        relay.to_down = _Flow(relay, down_pipe, upward=False)
        relay.to_up.start(down_sock, up_sock)
        relay.to_down.start(up_sock, down_sock)
        return relay

    def flow_done(self) -> None:
        if (
            self.to_up is not None
            and self.to_down is not None
            and self.to_up.done
            and self.to_down.done
        ):
            self.session.close()

    def fail(self) -> None:
        self.session.close()

    def close(self) -> None:
        """Stop both directions and close both sockets (the session does the accounting)."""
        global active_sessions
        if self.closed:
            return
        self.closed = True
        active_sessions -= 1
        for flow in (self.to_up, self.to_down):
            if flow is not None:
                flow.stop()
        self.down.close()
        self.up.close()
