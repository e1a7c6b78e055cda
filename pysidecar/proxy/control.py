"""The control channel between the main process and its workers: framed messages on a socketpair.

Promises:
- A message is a dict, pickled, behind a 4-byte big-endian length. Both ends are this project's
  own processes (the main process forks its workers), so pickle carries frozen model objects
  (a whole `Bootstrap` on reload) without a schema of its own. A new worker needs no start
  message: it is forked with its config (proxy/worker_main.py).
- Requests carry an "id"; the worker answers with the same id. Unsolicited worker messages
  ("ready") have no id.
- Worker side: `ControlProtocol`, an asyncio Protocol that calls a handler per request.
  Main side: `ControlClient`, request/response over asyncio streams (not on the data path).
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import struct
from collections.abc import Callable
from typing import Any, cast

Message = dict[str, Any]
HEADER = struct.Struct("!I")


def encode(msg: Message) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class ControlProtocol(asyncio.Protocol):
    """Worker end: decodes frames and answers each request with handler(request)."""

    def __init__(self, handler: Callable[[Message], Any], on_lost: Callable[[], None]) -> None:
        self._handler = handler
        self._on_lost = on_lost
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, msg: Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if len(self._buf) < HEADER.size + size:
                return
            body = bytes(self._buf[HEADER.size : HEADER.size + size])
            del self._buf[: HEADER.size + size]
            request: Message = pickle.loads(body)
            try:
                result = self._handler(request)
                reply: Message = {"id": request.get("id"), "result": result}
            except Exception as e:  # report it to the main process; the worker keeps serving
                reply = {"id": request.get("id"), "error": f"{type(e).__name__}: {e}"}
            self.send(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


class ControlClient:
    """Main-process end for one worker: `await request(op, ...)`; unsolicited messages go to
    `on_event`."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_event: Callable[[Message], None]
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(HEADER.size)
                (size,) = HEADER.unpack(header)
                msg: Message = pickle.loads(await self._reader.readexactly(size))
                waiter = self._waiting.pop(msg.get("id") or 0, None)
                if waiter is None:
                    self._on_event(msg)
                elif "error" in msg:
                    waiter.set_exception(RuntimeError(msg["error"]))
                else:
                    waiter.set_result(msg.get("result"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in self._waiting.values():
                if not w.done():
                    w.set_exception(ConnectionError("worker control channel closed"))
            self._waiting.clear()

    async def request(self, op: str, timeout: float = 5.0, **fields: Any) -> Any:
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        self._writer.write(encode({"id": msg_id, "op": op, **fields}))
        return await asyncio.wait_for(fut, timeout)

    def close(self) -> None:
        self._task.cancel()
        self._writer.close()
