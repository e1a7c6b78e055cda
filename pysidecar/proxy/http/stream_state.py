"""The lifecycle of one HTTP stream (the connection manager's `ActiveStream`) as one state
machine: states and the events that move between them, in a table (h11's `_state.py` is the
model).

What for: a stream has two halves that end independently: the request (read from the client,
then handed to the HTTP filter chain) and the response (written to the client). Before this
table the stream was four booleans (`started`, `request_done`, `response_started`,
`response_done`) set from five files; now only `ActiveStream` moves its state, through
`advance`, and everyone else reads it.

A state is a small int whose bits say what has happened, so that the data path's questions
("has the response started?") are one `&`; the table lists which bit patterns are states at
all and which event moves each one where. An event a state has no row for is a bug:
`advance` raises `StreamStateError`. `DONE` and `DONE_EARLY` are ended (the stream is
accounted and gone for its connection; in `DONE_EARLY` the rest of the request body is still
read and dropped).

    state          started  request in  response started  response done
    RECEIVING        -         -              -                 -        head read, queued
    RECEIVED         -         x              -                 -        pipelined, waiting
    DECODING         x         -              -                 -        body still arriving
    WAITING          x         x              -                 -        upstream at work
    ENCODING_EARLY   x         -              x                 -        early response
    ENCODING         x         x              x                 -
    DONE_EARLY       x         -              x?                x        body read & dropped
    DONE             x         x              x?                x

Events (the table below says from where):
    START           the filter chain starts decoding the request (routing)
    REQUEST_END     the client's request is complete
    RESPONSE_START  the response head is handed to the codec (upstream headers, local reply)
    RESPONSE_END    the stream is over for the client: response complete, reset, local reply
    ABANDON         the connection answers or drops the stream itself (codec errors): ended
"""

from __future__ import annotations

from typing import Final

# Its own module: mypyc compiles this one and cannot compile a RuntimeError subclass.
from pysidecar.proxy.http.stream_state_error import StreamStateError

# The bits a state is made of.
STARTED: Final = 1
REQUEST_DONE: Final = 2
RESPONSE_STARTED: Final = 4
RESPONSE_DONE: Final = 8

RECEIVING: Final = 0
RECEIVED: Final = REQUEST_DONE
DECODING: Final = STARTED
WAITING: Final = STARTED | REQUEST_DONE
ENCODING_EARLY: Final = STARTED | RESPONSE_STARTED
ENCODING: Final = STARTED | REQUEST_DONE | RESPONSE_STARTED
# Ended with or without a response head written (a reset before the response has none).
DONE_EARLY: Final = STARTED | RESPONSE_DONE
DONE_EARLY_AFTER_RESPONSE: Final = STARTED | RESPONSE_STARTED | RESPONSE_DONE
DONE: Final = STARTED | REQUEST_DONE | RESPONSE_DONE
DONE_AFTER_RESPONSE: Final = STARTED | REQUEST_DONE | RESPONSE_STARTED | RESPONSE_DONE

START, REQUEST_END, RESPONSE_START, RESPONSE_END, ABANDON = range(5)

NAMES: Final = {
    RECEIVING: "RECEIVING",
    RECEIVED: "RECEIVED",
    DECODING: "DECODING",
    WAITING: "WAITING",
    ENCODING_EARLY: "ENCODING_EARLY",
    ENCODING: "ENCODING",
    DONE_EARLY: "DONE_EARLY",
    DONE_EARLY_AFTER_RESPONSE: "DONE_EARLY",
    DONE: "DONE",
    DONE_AFTER_RESPONSE: "DONE",
}
EVENT_NAMES: Final = ("START", "REQUEST_END", "RESPONSE_START", "RESPONSE_END", "ABANDON")

_ENDED = (DONE_EARLY, DONE_EARLY_AFTER_RESPONSE, DONE, DONE_AFTER_RESPONSE)
_ALL = (RECEIVING, RECEIVED, DECODING, WAITING, ENCODING_EARLY, ENCODING, *_ENDED)

# (state, event) → next state. Events that are no-ops in a state (a second RESPONSE_END
# after a reset, a REQUEST_END of a stream that ended early) have rows to themselves: the
# stream's callers may race (an upstream's end and a timeout in one loop turn), the state
# may not.
TRANSITIONS: Final[dict[tuple[int, int], int]] = {
    (RECEIVING, START): DECODING,
    (RECEIVED, START): WAITING,
    (RECEIVING, REQUEST_END): RECEIVED,
    (DECODING, REQUEST_END): WAITING,
    (ENCODING_EARLY, REQUEST_END): ENCODING,
    (DONE_EARLY, REQUEST_END): DONE,
    (DONE_EARLY_AFTER_RESPONSE, REQUEST_END): DONE_AFTER_RESPONSE,
    (WAITING, REQUEST_END): WAITING,  # HTTP/2 trailers then END_STREAM: ends once
    (ENCODING, REQUEST_END): ENCODING,
    (DONE, REQUEST_END): DONE,
    (DONE_AFTER_RESPONSE, REQUEST_END): DONE_AFTER_RESPONSE,
    (DECODING, RESPONSE_START): ENCODING_EARLY,
    (WAITING, RESPONSE_START): ENCODING,
    (ENCODING_EARLY, RESPONSE_START): ENCODING_EARLY,  # a 100-continue's head, then the final
    (ENCODING, RESPONSE_START): ENCODING,
    (DECODING, RESPONSE_END): DONE_EARLY,
    (WAITING, RESPONSE_END): DONE,
    (ENCODING_EARLY, RESPONSE_END): DONE_EARLY_AFTER_RESPONSE,
    (ENCODING, RESPONSE_END): DONE_AFTER_RESPONSE,
    **{(s, RESPONSE_END): s for s in _ENDED},
    **{(s, ABANDON): DONE_AFTER_RESPONSE for s in _ALL},
}


def advance(state: int, event: int) -> int:
    """The state after `event`, or StreamStateError."""
    nxt = TRANSITIONS.get((state, event))
    if nxt is None:
        raise StreamStateError(
            f"stream event {EVENT_NAMES[event]} in state {NAMES.get(state, state)}"
        )
    return nxt
