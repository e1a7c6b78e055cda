"""use_remote_address on an edge HCM: x-forwarded-for / -proto, external vs internal peers."""

from __future__ import annotations

from pysidecar.proxy.http.edge import edge_request, is_internal


def test_external_peer() -> None:
    clean = [(b"accept", b"*/*"), (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https"), (b"x-request-id", b"mine")]
    noted = {b"x-forwarded-proto": b"https", b"x-request-id": b"mine"}
    out, seen = edge_request(clean, noted, "198.18.0.2", b"http")
    assert dict(out) == {
        b"accept": b"*/*",
        b"x-forwarded-for": b"1.2.3.4,198.18.0.2",
        b"x-forwarded-proto": b"http",
        b"x-envoy-external-address": b"198.18.0.2",
    }
    assert seen == {b"x-forwarded-proto": b"http"}  # no x-request-id: the stream makes one


def test_internal_peer_keeps_its_request_id() -> None:
    out, seen = edge_request([(b"x-request-id", b"mine")], {b"x-request-id": b"mine"}, "10.1.2.3", b"https")
    assert dict(out) == {
        b"x-forwarded-for": b"10.1.2.3",
        b"x-forwarded-proto": b"https",
        b"x-envoy-internal": b"true",
        b"x-request-id": b"mine",
    }
    assert seen[b"x-request-id"] == b"mine"


def test_internal_ranges() -> None:
    assert [is_internal(a) for a in ("10.0.0.1", "172.31.0.1", "192.168.1.1", "127.0.0.1", "::1", "fd00::1")] == [True] * 6
    assert [is_internal(a) for a in ("198.18.0.1", "172.32.0.1", "2001:2::1", "8.8.8.8")] == [False] * 4
