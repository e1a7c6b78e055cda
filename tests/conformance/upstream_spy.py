"""A raw-socket HTTP/1.1 upstream for hostile-traffic tests: it records every byte each proxy
writes to it and answers each request head with what the test scripted.

Every connection is a thread; the request heads found in its bytes are split at CRLFCRLF (a
smuggled second request shows up as a second head on the same connection). By default each
request is answered `200` with `x-echo-path: <the target>` and a body naming the target, so a
test can tell whether the response it got belongs to its own request. A test may script the
raw bytes the spy answers a target with (`script[target] = bytes`, then the spy closes the
connection when `close_after` names the target), which is how upstream faults are sent.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class UpstreamSpy:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.lock = threading.Lock()
        self.received: list[bytes] = []  # each connection's bytes, by connection
        self.script: dict[bytes, bytes | Callable[[socket.socket], None]] = {}
        self.closing = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    # -- what the tests read ----------------------------------------------------------------
    def snapshot(self) -> list[int]:
        """How many bytes each connection has brought so far (for `since`)."""
        with self.lock:
            return [len(b) for b in self.received]

    def since(self, snap: list[int]) -> list[bytes]:
        """The bytes each connection brought after `snap` (new connections whole), non-empty only."""
        with self.lock:
            data = list(self.received)
        out = [blob[snap[i] if i < len(snap) else 0 :] for i, blob in enumerate(data)]
        return [b for b in out if b]

    def targets_since(self, snap: list[int]) -> list[bytes]:
        """The request target of every request line that arrived after `snap`."""
        out = []
        for blob in self.since(snap):
            for line in blob.split(b"\r\n"):
                parts = line.split(b" ")
                if len(parts) == 3 and parts[2].startswith(b"HTTP/"):
                    out.append(parts[1])
        return out

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.script.clear()

    def close(self) -> None:
        self.closing = True
        self.sock.close()

    # -- serving -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                index = len(self.received)
                self.received.append(b"")
            threading.Thread(target=self._serve, args=(c, index), daemon=True).start()

    def _serve(self, c: socket.socket, index: int) -> None:
        buf = b""
        c.settimeout(30)
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.received[index] += data
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    buf = _skip_body(head, buf, c)
                    line = head.split(b"\r\n", 1)[0].split(b" ")
                    target = line[1] if len(line) > 1 else b""
                    answer = self.script.get(target)
                    if answer is None:
                        body = b"answer for " + target
                        c.sendall(
                            b"HTTP/1.1 200 OK\r\nx-echo-path: " + target.replace(b"\r", b"\\r").replace(b"\n", b"\\n")
                            + b"\r\ncontent-length: %d\r\n\r\n" % len(body) + body
                        )
                    elif callable(answer):
                        answer(c)
                        return
                    else:
                        c.sendall(answer)
                        time.sleep(0.05)
                        c.shutdown(socket.SHUT_RDWR)
                        return
        except OSError:
            return
        finally:
            c.close()


def _skip_body(head: bytes, rest: bytes, c: socket.socket) -> bytes:
    """Consume a content-length or chunked body after `head` (read more when needed)."""
    lower = head.lower()
    length = 0
    for line in lower.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            length = int(value.strip() or b"0")
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            while b"0\r\n\r\n" not in rest:
                data = c.recv(65536)
                if not data:
                    return b""
                rest += data
            return rest.split(b"0\r\n\r\n", 1)[1]
    while len(rest) < length:
        data = c.recv(65536)
        if not data:
            return b""
        rest += data
    return rest[length:]
