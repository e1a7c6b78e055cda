"""A worker process's entry point: `python -m pysidecar.proxy.worker_main <control fd>`.

Promises:
- The main process starts each worker as a plain subprocess (not multiprocessing: no resource
  tracker process, and the worker imports only the data path, not the config front ends or the
  admin), passing one end of a socketpair as the control fd.
- The first message on that fd says who the worker is: {"bootstrap", "index", "drain_time",
  "log_level", "access_log"}; then the fd becomes the worker's control channel.
- Exit status: 0 after a drain, 1 when the worker cannot bind its listeners, 2 on bad usage.
"""

from __future__ import annotations

import pickle
import signal
import socket
import struct
import sys

import uvloop

from pysidecar.proxy.control import HEADER
from pysidecar.proxy.logs import setup_logging
from pysidecar.proxy.worker import Worker


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("control channel closed before the worker's start message")
        data += chunk
    return bytes(data)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m pysidecar.proxy.worker_main <control fd>", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(argv[0]))
    (size,) = struct.unpack(HEADER.format, _read_exactly(sock, HEADER.size))
    start = pickle.loads(_read_exactly(sock, size))
    setup_logging(start["log_level"])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides on Ctrl-C
    sock.setblocking(False)

    async def run() -> int:
        worker = Worker(start["bootstrap"], start["index"], start["drain_time"], start["access_log"])
        return await worker.run(sock)

    result: int = uvloop.run(run())
    return result


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
