"""A misbehaving HTTP/2 (h2c) upstream for conformance tests: `python -m tests.h2_upstream_app
--port P`. What it does depends on the request path:

- `/ok`: 200 with a body and a trailer.
- `/rst-before`: RST_STREAM INTERNAL_ERROR before any response header.
- `/rst-mid`: 200, 10 bytes of body, then RST_STREAM INTERNAL_ERROR.
- `/goaway-mid`: 200 and 10 bytes, then GOAWAY (last stream: this one) and the connection
  closed before the response ends.
- `/big-headers`: a response header block of about 100 KiB (beyond Envoy's 60 KiB default).
- `/no-window`: takes the first 64 KiB of a request body (the initial window) and never
  opens that stream's window further (the connection's it does), never answers.
- `/garbage`: a HEADERS frame whose HPACK block does not decode.
- `/echo-trailers`: at the request's end, 200 with `x-got-trailers` listing the request's
  trailers (`name=value,...`, empty when none came) and the body's length.
"""

from __future__ import annotations

import argparse
import asyncio
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions


class BadUpstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.paths: dict[int, bytes] = {}
        self.trailers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.lengths: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.Transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.t.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.t.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                path = dict(ev.headers)[b":path"]
                self.paths[ev.stream_id] = path
                if path not in (b"/no-window", b"/echo-trailers"):
                    self._answer(ev.stream_id, path)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.trailers[ev.stream_id] = list(ev.headers or [])
            elif isinstance(ev, h2.events.DataReceived) and self.paths.get(ev.stream_id) == b"/no-window":
                # The stream's window stays shut; the connection's reopens for other streams.
                if ev.flow_controlled_length:
                    self.h2.increment_flow_control_window(ev.flow_controlled_length)
            elif isinstance(ev, h2.events.DataReceived) and self.paths.get(ev.stream_id) == b"/echo-trailers":
                self.lengths[ev.stream_id] = self.lengths.get(ev.stream_id, 0) + len(ev.data or b"")
                self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and self.paths.get(ev.stream_id) == b"/echo-trailers":
                got = b",".join(n + b"=" + v for n, v in self.trailers.get(ev.stream_id, []))
                length = b"%d" % self.lengths.get(ev.stream_id, 0)
                self.h2.send_headers(
                    ev.stream_id, [(b":status", b"200"), (b"x-got-trailers", got), (b"x-got-length", length)], end_stream=True
                )
        if not self.t.is_closing():
            self.t.write(self.h2.data_to_send())

    def _answer(self, sid: int, path: bytes) -> None:
        h = self.h2
        if path == b"/rst-before":
            h.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == b"/rst-mid":
            h.send_headers(sid, [(b":status", b"200")])
            h.send_data(sid, b"0123456789")
            h.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == b"/goaway-mid":
            h.send_headers(sid, [(b":status", b"200")])
            h.send_data(sid, b"0123456789")
            self.t.write(h.data_to_send() + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", sid, 0))
            self.t.close()
        elif path == b"/big-headers":
            h.send_headers(sid, [(b":status", b"200"), *((b"x-big-%d" % i, b"v" * 1000) for i in range(100))], end_stream=True)
        elif path == b"/garbage":
            self.t.write(h.data_to_send() + b"\x00\x00\x04\x01\x05" + struct.pack(">I", sid) + b"\xff" * 4)
        else:
            h.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
            h.send_data(sid, b"ok\n")
            h.send_headers(sid, [(b"x-trailer", b"done")], end_stream=True)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(BadUpstream, "127.0.0.1", port)
    print(f"ready h2 {port}", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.h2_upstream_app")
    p.add_argument("--port", type=int, required=True)
    asyncio.run(serve(p.parse_args().port))


if __name__ == "__main__":
    main()
