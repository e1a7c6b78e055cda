"""StreamStateError: an event a stream's state has no transition for (stream_state.advance).

Promises: a RuntimeError, raised only for a bug in the caller, never for anything a peer sends.
Apart from stream_state.py because that module is compiled with mypyc, which cannot compile a
subclass of RuntimeError.
"""

from __future__ import annotations


class StreamStateError(RuntimeError):
    """An event the stream's state has no transition for: a bug in the caller."""
