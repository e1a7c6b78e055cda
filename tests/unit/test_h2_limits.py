"""h2_limits: Envoy's HTTP/2 flood formulas (protocol_constraints.cc) and premature-reset rule
(CVE-2023-44487) over real frame bytes, as hyperframe serialises them."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from pysidecar.proxy.http.h2_limits import (
    COMPRESSION_ERROR,
    Http2Limits,
    ProtocolConstraints,
    is_premature,
    too_many_premature_resets,
    with_goaway_code,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def headers(sid: int, end_stream: bool = True, end_headers: bool = True, data: bytes = b"\x82") -> bytes:
    f = HeadersFrame(sid)
    f.data = data
    if end_stream:
        f.flags.add("END_STREAM")
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def feed_bytewise(c: ProtocolConstraints, data: bytes) -> str | None:
    for i in range(len(data)):
        verdict = c.inbound(data[i : i + 1])
        if verdict is not None:
            return verdict
    return None


def test_empty_frames_one_allowed_in_a_row() -> None:
    c = ProtocolConstraints()
    assert c.inbound(PREFACE + headers(1, end_stream=False) + DataFrame(1).serialize()) is None
    assert c.inbound(DataFrame(1).serialize()) == "inbound_empty_frames_flood"


def test_empty_frames_reset_by_a_frame_with_payload_and_end_stream_counts_as_not_empty() -> None:
    c = ProtocolConstraints()
    d = DataFrame(1, data=b"x").serialize()
    end = DataFrame(1)
    end.flags.add("END_STREAM")
    stream = PREFACE + headers(1, end_stream=False)
    assert c.inbound(stream + (DataFrame(1).serialize() + d) * 50 + end.serialize() * 5) is None


def test_padding_only_data_is_empty() -> None:
    c = ProtocolConstraints()
    frame = DataFrame(1, data=b"", pad_length=10)
    frame.flags.add("PADDED")
    padded = frame.serialize()
    assert len(padded) == 9 + 11
    assert c.inbound(PREFACE + headers(1, end_stream=False) + padded) is None
    assert c.inbound(padded) == "inbound_empty_frames_flood"


def test_priority_frames_100_per_stream_plus_100() -> None:
    c = ProtocolConstraints()
    prio = PriorityFrame(3, depends_on=0, stream_weight=16).serialize()
    assert c.inbound(PREFACE + prio * 100) is None
    assert c.inbound(headers(1)) is None  # one stream: 200 allowed
    assert c.inbound(prio * 100) is None
    assert c.inbound(prio) == "inbound_priority_frames_flood"


def test_window_updates_bounded_by_streams_and_data_sent() -> None:
    c = ProtocolConstraints()
    wu = WindowUpdateFrame(0, window_increment=1).serialize()
    assert c.inbound(PREFACE + wu) is None
    assert c.inbound(wu) == "inbound_window_update_frames_flood"
    c = ProtocolConstraints()
    c.outbound(DataFrame(1, data=b"x").serialize() * 2, queued_before=False)  # 2 DATA sent
    assert c.inbound(PREFACE + wu * 41) is None  # 1 + 2 x (0 + 10 x 2)
    assert c.inbound(wu) == "inbound_window_update_frames_flood"


def test_frames_split_anywhere_count_the_same() -> None:
    data = PREFACE + headers(1, end_stream=False) + DataFrame(1, data=b"abc" * 1000).serialize()
    data += DataFrame(1).serialize() + DataFrame(1).serialize()
    assert feed_bytewise(ProtocolConstraints(), data) == "inbound_empty_frames_flood"
    assert ProtocolConstraints().inbound(data) == "inbound_empty_frames_flood"


def test_continuation_counts_a_stream_at_end_headers() -> None:
    c = ProtocolConstraints()
    cont = ContinuationFrame(1, data=b"\x82")
    cont.flags.add("END_HEADERS")
    assert c.inbound(PREFACE + headers(1, end_headers=False) + cont.serialize()) is None
    assert c.inbound_streams == 1


def test_outbound_control_frames_queued_past_1000_is_a_flood() -> None:
    c = ProtocolConstraints()
    ack = PingFrame(0, opaque_data=b"12345678")
    ack.flags.add("ACK")
    assert c.outbound(ack.serialize() * 1000, queued_before=False) is None
    assert c.outbound(ack.serialize(), queued_before=True) == "outbound_control_flood"
    # A socket that wrote everything in between releases the count.
    c = ProtocolConstraints()
    for _ in range(10):
        assert c.outbound(ack.serialize() * 600, queued_before=False) is None


def test_outbound_frames_queued_past_10000_is_a_flood() -> None:
    c = ProtocolConstraints(Http2Limits(max_outbound_frames=10))
    assert c.outbound(DataFrame(1, data=b"x").serialize() * 10, queued_before=False) is None
    assert c.outbound(RstStreamFrame(1).serialize(), queued_before=True) == "outbound_flood"
    assert ProtocolConstraints().limits.max_outbound_frames == 10000


def test_premature_resets_envoys_rule() -> None:
    assert not too_many_premature_resets(0, 0)
    assert not too_many_premature_resets(249, 249)
    assert too_many_premature_resets(250, 250)
    assert not too_many_premature_resets(499, 124)
    assert not too_many_premature_resets(1000, 499)
    assert too_many_premature_resets(1000, 500)
    assert is_premature(0.01, None) and is_premature(1.9, 0)
    assert not is_premature(0.01, 200) and not is_premature(2.0, None)


def test_with_goaway_code_rewrites_the_last_goaway_only() -> None:
    settings_ack = SettingsFrame(0)
    settings_ack.flags.add("ACK")
    goaway = GoAwayFrame(0, last_stream_id=5, error_code=1).serialize()
    out = with_goaway_code(settings_ack.serialize() + goaway, COMPRESSION_ERROR)
    assert out[:9] == settings_ack.serialize()
    assert out[-8:] == (5).to_bytes(4) + COMPRESSION_ERROR.to_bytes(4)
    assert with_goaway_code(settings_ack.serialize(), COMPRESSION_ERROR) == settings_ack.serialize()
