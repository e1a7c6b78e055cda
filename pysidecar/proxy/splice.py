"""tcp_proxy's fast path: the relay owns both sockets; small messages are copied, streams spliced.

Used for a tcp_proxy connection when nothing needs to see its bytes: both ends are plain TCP
sockets and no filter reads the payload. Envoy cannot do this; HAProxy and Go's io.Copy do.

Promises:
- Exact bytes in order, both directions. Per direction, what was read from the source and not
  yet written to the destination is held in one place, nothing more is read while it holds
  bytes, and it holds at most 64 KiB, or one grown pipe (at most the listener's
  per_connection_buffer_limit_bytes): Envoy's watermark bound. A blocked destination stops
  reading the source (tcp downstream_flow_control_paused_reading_total / cluster
  upstream_flow_control_paused_reading_total count it, as on the Protocol path) until the
  destination drains.
- Two ways to move a direction's bytes, chosen by measurement on loopback (bench/README.md):
  a direction starts by copying (recv_into a per-worker 64 KiB scratch buffer, send from it:
  two syscalls per message, no pipe), which for request/response messages costs the kernel
  ~12% less per request than splice(2)'s pipe round trip. The first read that fills the
  scratch buffer marks a stream: once what it read is sent, the direction takes a pipe and
  moves socket → pipe → socket with splice(2) from then on, the bytes never entering user
  space; that pipe grows (F_SETPIPE_SZ) to GROWN_PIPE, never past the listener's buffer limit,
  for at most MAX_GROWN pipes per worker: fewer, larger splices per GB (2 per MiB instead of
  2 per 64 KiB). A pipe that cannot be had, or grown (the user's pipe budget spent: EPERM),
  leaves the direction as it was. Bytes a blocked destination left in the scratch buffer are
  copied out first (the buffer is the next read's).
- Half-close: EOF from one side, once the held bytes are written, becomes shutdown(SHUT_WR)
  towards the other; the session closes when both directions are done, or at once on an error
  (reset, broken pipe) from either side.
- Byte stats (tcp.*.downstream_cx_rx/tx_bytes_total, cluster upstream_cx_rx/tx_bytes_total) and
  the session's rx/tx totals (StreamInfo bytes, idle timeout) are counted as bytes are read
  (rx) and written (tx).
- `SpliceRelay.attach` either takes the connection over completely or changes nothing (the
  caller then uses the Protocol path). The downstream socket is dup'ed and its transport closed
  (closing one of two fds of a socket sends no FIN; libuv removes its own fd from epoll).
- Bounded resources: at most MAX_SESSIONS relayed sessions per worker (each may take two pipes,
  whose pages Linux limits per user: fs.pipe-user-pages-soft), the rest use the Protocol path;
  empty default-sized pipes of closed sessions are kept in a small pool; a grown pipe is
  closed, not pooled.
- Steady state makes no syscall beyond the reads and writes themselves: readers stay
  registered, a short read returns without trying again (no EAGAIN), held bytes are written
  out before the next read.
- `PYSIDECAR_SPLICE=0` in the environment turns the fast path off (the bench compares both).
- Compiled by mypyc (pysidecar/native.py): _Flow and SpliceRelay are native classes; the
  per-message code touches only its own attributes and the two stats blocks it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pysidecar.observe.stats import ClusterStats, TcpProxyStats
    from pysidecar.proxy.tcp_proxy import TcpProxySession

ENABLED: bool = hasattr(os, "splice") and os.environ.get("PYSIDECAR_SPLICE", "1") != "0"
# Linux's default pipe size. Larger pipes move more per wake-up, but count against the proxy
# user's fs.pipe-user-pages-soft (16384 pages), beyond which Linux hands out 2-page pipes.
PIPE_SIZE: Final = int(os.environ.get("PYSIDECAR_SPLICE_PIPE", 64 * 1024))
# Below this, a pipe (shrunk by the kernel after the user's pipe budget ran out) is not worth it.
MIN_PIPE: Final = 64 * 1024
MAX_SESSIONS: Final = 512  # per worker: 2 pipes each, 16 pages a pipe → at most 16384 pages
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

# Copying directions read here and send from here at once (one event loop: no two at a time).
COPY_SIZE: Final = 64 * 1024
_SCRATCH: Final = bytearray(COPY_SIZE)
_VIEW: Final = memoryview(_SCRATCH)
_EMPTY: Final = memoryview(b"")

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


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


class _Detached(asyncio.Protocol):
    """Given to the downstream transport we let go of: its events no longer matter."""

    def eof_received(self) -> bool:
        return False


_DETACHED = _Detached()


class _Flow:
    """One direction: src socket → (scratch buffer or pipe) → dst socket."""

    __slots__ = (
        "buf",
        "cap",
        "cluster_stats",
        "done",
        "dst",
        "dst_sock",
        "eof",
        "grown",
        "held",
        "loop",
        "may_splice",
        "pipe",
        "r",
        "reading",
        "relay",
        "session",
        "src",
        "src_sock",
        "stats",
        "upward",
        "w",
        "waiting",
    )

    def __init__(self, relay: SpliceRelay, upward: bool) -> None:
        self.relay = relay
        self.session = relay.session
        self.loop = relay.loop
        self.upward = upward  # downstream → upstream
        self.pipe: tuple[int, int, int] | None = None  # None: copying
        self.r = self.w = -1
        self.cap = COPY_SIZE
        self.buf = _EMPTY  # copying: the held bytes (a slice of _SCRATCH, or our own copy)
        self.src = -1
        self.dst = -1
        self.src_sock: socket.socket | None = None
        self.dst_sock: socket.socket | None = None
        # Held here, not looked up per message: the session's stats blocks (set by start()).
        self.stats: TcpProxyStats | None = None
        self.cluster_stats: ClusterStats | None = None
        self.held = 0  # bytes read from src and not yet written to dst
        self.eof = False
        self.done = False
        self.reading = False
        self.waiting = False
        self.may_splice = True  # one try per direction, at its first full read
        self.grown = False

    def start(self, src: socket.socket, dst: socket.socket) -> None:
        self.src_sock = src
        self.dst_sock = dst
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.stats = self.session.stats
        self.cluster_stats = self.session.cluster_stats
        if self.held:
            self.flush()  # bytes sniffed before the upstream existed go first
        elif not self.relay.closed:
            self.loop.add_reader(self.src, self.readable)
            self.reading = True

    def readable(self) -> None:
        relay = self.relay
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                if self.pipe is None:
                    n = self.src_sock.recv_into(_SCRATCH)  # type: ignore[union-attr]
                else:
                    n = os.splice(self.src, self.w, self.cap - self.held, None, None, _FLAGS)
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
            if self.pipe is None:
                self.buf = _VIEW[:n]
            self.held += n
            if self.upward:
                self.session.rx_bytes += n
                self.stats.downstream_cx_rx_bytes_total += n  # type: ignore[union-attr]
            else:
                self.cluster_stats.upstream_cx_rx_bytes_total += n  # type: ignore[union-attr]
            full = self.held == self.cap
            self.flush()
            # A short read emptied the socket's queue; a blocked destination stopped reading.
            if not full or not self.reading or relay.closed:
                return
            if self.may_splice:
                self.take_pipe()

    def take_pipe(self) -> None:
        """A read filled the buffer: a stream. Splice it from now on, through a grown pipe."""
        global grown_pipes
        self.may_splice = False
        pipe = _open_pipe() if self.pipe is None and not self.held else None
        if pipe is None:
            return  # none to be had: the direction keeps copying
        self.pipe = pipe
        self.r, self.w, self.cap = pipe
        self.buf = _EMPTY
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
        """Write the held bytes out; on a full destination wait for it and stop reading the source."""
        relay = self.relay
        while self.held:
            try:
                if self.pipe is None:
                    m = self.dst_sock.send(self.buf)  # type: ignore[union-attr]
                    self.buf = self.buf[m:]
                else:
                    m = os.splice(self.r, self.dst, self.held, None, None, _FLAGS)
            except BlockingIOError:
                if self.pipe is None and self.buf.obj is _SCRATCH:
                    self.buf = memoryview(self.buf.tobytes())  # the next read reuses the scratch
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
            self.held -= m
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
        if self.pipe is not None:
            if self.grown:
                grown_pipes -= 1  # the pool keeps default-sized pipes only
            _release_pipe(self.pipe, empty=self.held == 0 and not self.grown)
            self.pipe = None


class SpliceRelay:
    """A tcp_proxy session's bytes, both directions: a _Flow each."""

    __slots__ = ("closed", "down", "loop", "session", "to_down", "to_up", "up")

    def __init__(
        self,
        session: TcpProxySession,
        down: socket.socket,
        to_up: _Flow | None,
        to_down: _Flow | None,
    ) -> None:
        self.session = session
        self.loop = session.loop
        self.down = down
        self.up: socket.socket | None = None
        self.closed = False
        self.to_up = to_up
        self.to_down = to_down

    @classmethod
    def attach(
        cls, session: TcpProxySession, transport: asyncio.Transport, initial: bytes, host: str
    ) -> SpliceRelay | None:
        """Take the downstream connection off its transport, or return None and change nothing."""
        global active_sessions
        if not ENABLED or active_sessions >= MAX_SESSIONS or not _is_ip(host):
            return None
        sock: Any = transport.get_extra_info("socket")
        if (
            sock is None
            or sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM
            or transport.get_extra_info("sslcontext") is not None
            or transport.get_write_buffer_size()
        ):
            return None
        try:
            down = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return None
        relay = cls(session, down, None, None)
        relay.to_up = _Flow(relay, upward=True)
        relay.to_down = _Flow(relay, upward=False)
        if initial:
            # Bytes the listener filters already read: they wait for the upstream.
            relay.to_up.buf = memoryview(initial)
            relay.to_up.held = len(initial)
            session.rx_bytes += len(initial)
            session.stats.downstream_cx_rx_bytes_total += len(initial)
        # The transport lets go of its fd; our dup keeps the connection open.
        transport.set_protocol(_DETACHED)
        transport.close()
        down.setblocking(False)
        active_sessions += 1
        return relay

    async def connect(self, host: tuple[str, int], bind: str | None) -> socket.socket:
        """Connect the upstream socket ourselves (non-blocking), no transport in between."""
        family = socket.AF_INET6 if ":" in host[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if bind:
                sock.bind((bind, 0))
            await self.loop.sock_connect(sock, host)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self, up: socket.socket) -> None:
        """The upstream is connected: pump both directions."""
        self.up = up
        assert self.to_up is not None and self.to_down is not None
        self.to_up.start(self.down, up)
        self.to_down.start(up, self.down)

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
        if self.up is not None:
            self.up.close()
