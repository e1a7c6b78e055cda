"""Envoy's HTTP/2 protocol constraints (source/common/http/http2/protocol_constraints.cc) and its
premature-reset heuristic (CVE-2023-44487, ConnectionManagerImpl::maybeDrainDueToPrematureResets),
for the downstream HTTP/2 codec (h2_conn).

The h2 library hides frames behind events (CONTINUATION, empty DATA and PRIORITY make none, or
none that can be counted), so `ProtocolConstraints` reads the frame headers of the bytes itself:
inbound before h2 parses them, outbound as h2 serialises them.

Promises:
- `Http2Limits` holds Envoy's defaults: max_outbound_frames 10000, max_outbound_control_frames
  1000, max_consecutive_inbound_frames_with_empty_payload 1, max_inbound_priority_frames_per_stream
  100, max_inbound_window_update_frames_per_data_frame_sent 10.
- `inbound(data)` returns the name of Envoy's flood stat the bytes trip
  (`inbound_empty_frames_flood`, `inbound_priority_frames_flood`,
  `inbound_window_update_frames_flood`), else None; Envoy's formulas, per connection:
  empty HEADERS / CONTINUATION / DATA frames without END_STREAM in a row > the max;
  PRIORITY frames > max x (1 + streams opened); WINDOW_UPDATE frames > 1 + 2 x (streams opened
  + max x DATA frames sent).
- `outbound(data, queued_before)` counts the frames h2 wrote; frames count as queued until the
  socket's write buffer is found empty (`queued_before` False): more than max_outbound_frames
  queued is `outbound_flood`, more than max_outbound_control_frames PING / SETTINGS /
  RST_STREAM frames is `outbound_control_flood` (a client that sends PINGs or SETTINGS and
  does not read what they cost). This is coarser than Envoy's per-fragment release (a queue
  drains to zero, not frame by frame), so it may cut a little earlier, never later.
- `too_many_premature_resets(closed, premature)`: Envoy's rule with its runtime default 500:
  a connection closes once half its closed streams (or half of 500, before 500 closed) were
  reset by the client within a second of starting and before a response.
- `with_goaway_code(data, code)`: the GOAWAY h2 queued when it raised, re-coded: h2 says
  PROTOCOL_ERROR / ENHANCE_YOUR_CALM for a header block it cannot decode, where RFC 9113 §4.3
  and Envoy 1.40 (checked) say COMPRESSION_ERROR.
- Pure counting: nothing here does I/O; the codec decides what a verdict costs.
"""

from __future__ import annotations

from dataclasses import dataclass

_DATA, _HEADERS, _PRIORITY, _RST_STREAM, _SETTINGS, _PING, _WINDOW_UPDATE, _CONTINUATION = (
    0, 1, 2, 3, 4, 6, 8, 9,
)  # fmt: skip
_END_STREAM, _END_HEADERS, _PADDED = 0x1, 0x4, 0x8
_GOAWAY = 7
_CONTROL = frozenset({_RST_STREAM, _SETTINGS, _PING})
COMPRESSION_ERROR = 9
PREFACE_LEN = 24

# Envoy's runtime defaults: overload.premature_reset_total_stream_count and
# overload.premature_reset_min_stream_lifetime_seconds.
PREMATURE_RESET_TOTAL_STREAM_COUNT = 500
PREMATURE_RESET_MIN_STREAM_LIFETIME_S = 1


@dataclass(frozen=True, slots=True)
class Http2Limits:
    max_outbound_frames: int = 10000
    max_outbound_control_frames: int = 1000
    max_consecutive_inbound_frames_with_empty_payload: int = 1
    max_inbound_priority_frames_per_stream: int = 100
    max_inbound_window_update_frames_per_data_frame_sent: int = 10


DEFAULT_LIMITS = Http2Limits()


class ProtocolConstraints:
    __slots__ = (
        "consecutive_empty",
        "inbound_streams",
        "limits",
        "outbound_control_frames",
        "outbound_data_frames",
        "outbound_frames",
        "pending",
        "preface",
        "priority_frames",
        "skip",
        "window_update_frames",
    )

    def __init__(self, limits: Http2Limits = DEFAULT_LIMITS, preface: bool = True) -> None:
        self.limits = limits
        self.preface = PREFACE_LEN if preface else 0  # client preface bytes still to pass
        self.skip = 0  # payload bytes of the current inbound frame still to pass
        self.pending = b""  # the start of a frame whose header is not whole yet
        self.inbound_streams = 0
        self.consecutive_empty = 0
        self.priority_frames = 0
        self.window_update_frames = 0
        self.outbound_frames = 0
        self.outbound_control_frames = 0
        self.outbound_data_frames = 0

    # -- inbound -------------------------------------------------------------------------------
    def inbound(self, data: bytes) -> str | None:
        """Account the frames `data` completes; the flood stat name on the first violation."""
        if self.preface:
            take = min(self.preface, len(data))
            self.preface -= take
            data = data[take:]
        if self.pending:
            data = self.pending + data
            self.pending = b""
        n = len(data)
        i = min(self.skip, n)
        self.skip -= i
        while i < n:
            if n - i < 9:
                break
            length = int.from_bytes(data[i : i + 3])
            ftype = data[i + 3]
            flags = data[i + 4]
            padded = ftype in (_DATA, _HEADERS) and flags & _PADDED and length > 0
            if padded and n - i < 10:
                break
            pad = data[i + 9] + 1 if padded else 0
            verdict = self._frame(ftype, flags, length - pad)
            if verdict is not None:
                return verdict
            i += 9
            take = min(length, n - i)
            i += take
            self.skip = length - take
        if i < n:
            self.pending = data[i:]
        return None

    def _frame(self, ftype: int, flags: int, payload: int) -> str | None:
        """Envoy's trackInboundFrames for one frame header, then checkInboundFrameLimits."""
        if ftype in (_HEADERS, _CONTINUATION, _DATA):
            if ftype != _DATA and flags & _END_HEADERS:
                self.inbound_streams += 1
            if payload <= 0 and not flags & _END_STREAM:
                self.consecutive_empty += 1
            else:
                self.consecutive_empty = 0
        elif ftype == _PRIORITY:
            self.priority_frames += 1
        elif ftype == _WINDOW_UPDATE:
            self.window_update_frames += 1
        lim = self.limits
        if self.consecutive_empty > lim.max_consecutive_inbound_frames_with_empty_payload:
            return "inbound_empty_frames_flood"
        if self.priority_frames > lim.max_inbound_priority_frames_per_stream * (1 + self.inbound_streams):
            return "inbound_priority_frames_flood"
        allowed = 1 + 2 * (
            self.inbound_streams
            + lim.max_inbound_window_update_frames_per_data_frame_sent * self.outbound_data_frames
        )
        if self.window_update_frames > allowed:
            return "inbound_window_update_frames_flood"
        return None

    # -- outbound ------------------------------------------------------------------------------
    def outbound(self, data: bytes, queued_before: bool) -> str | None:
        """Account the whole frames h2 serialised into `data`; `queued_before`: the socket had
        not written everything before these. The flood stat name when the queue is too long."""
        if not queued_before:
            self.outbound_frames = self.outbound_control_frames = 0
        i, n = 0, len(data)
        frames = control = dataframes = 0
        while i + 9 <= n:
            ftype = data[i + 3]
            frames += 1
            if ftype in _CONTROL:
                control += 1
            elif ftype == _DATA:
                dataframes += 1
            i += 9 + int.from_bytes(data[i : i + 3])
        self.outbound_frames += frames
        self.outbound_control_frames += control
        self.outbound_data_frames += dataframes
        if self.outbound_frames > self.limits.max_outbound_frames:
            return "outbound_flood"
        if self.outbound_control_frames > self.limits.max_outbound_control_frames:
            return "outbound_control_flood"
        return None


def too_many_premature_resets(
    closed: int, premature: int, limit: int = PREMATURE_RESET_TOTAL_STREAM_COUNT
) -> bool:
    """Envoy's maybeDrainDueToPrematureResets: whether the connection must close."""
    if closed == 0:
        return False
    if closed < limit:
        # Even if every later stream were good, the limit would be reached with too many bad.
        return premature * 2 >= limit
    return premature * 2 >= closed


def is_premature(lifetime_s: float, response_code: int | None) -> bool:
    """Envoy's isPrematureRstStream: ended within the minimum lifetime (whole seconds, as Envoy
    truncates them) without a response."""
    if int(lifetime_s) > PREMATURE_RESET_MIN_STREAM_LIFETIME_S:
        return False
    return not response_code


def with_goaway_code(data: bytes, code: int) -> bytes:
    """`data` (whole frames) with its last frame's error code set to `code` when that frame
    is a GOAWAY (h2 queues its GOAWAY last when it ends a connection)."""
    i, n, last = 0, len(data), -1
    while i + 9 <= n:
        last = i
        i += 9 + int.from_bytes(data[i : i + 3])
    if last < 0 or data[last + 3] != _GOAWAY or i != n:
        return data
    at = last + 9 + 4  # after the last-stream-id
    return data[:at] + code.to_bytes(4) + data[at + 4 :]
