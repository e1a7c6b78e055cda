"""The last requests and connections a proxy finished, for `/explain?n=N` and `pysidecar explain --live N`.

Promises:
- Each worker keeps its last `RECENT` StreamInfo objects (a bounded deque: an append per
  stream, no copy on the data path); `record(info)` turns one into plain JSON-able facts
  (time, listener, original destination, method, host, path, route, cluster, upstream host,
  response code, flags, details, request id) only when the admin asks.
- `live_trace(bootstrap, rec, inbound)` is the decision trace `explain()` gives for the
  record's destination, host and path under the config now loaded, beside what the proxy
  observed then: a learner sees the decision and the outcome side by side (request headers
  are not kept, so header-matched routes are re-decided without them: said in the trace).
"""

from __future__ import annotations

from typing import Any, Final

from pysidecar.common.stream_info import StreamInfo
from pysidecar.explain.decisions import Question, explain
from pysidecar.model import Bootstrap, SocketAddress

RECENT: Final = 64


def record(info: StreamInfo) -> dict[str, Any]:
    return {
        "time": info.start_time,
        "listener": info.listener_name,
        "destination": info.downstream_local_address,
        "downstream": info.downstream_remote_address,
        "method": info.method,
        "host": info.authority,
        "path": info.original_path or info.path,
        "route": info.route_name,
        "cluster": info.upstream_cluster,
        "upstream_host": info.upstream_host,
        "response_code": info.response_code,
        "response_flags": info.response_flags_text,
        "details": info.response_code_details,
        "request_id": info.request_id,
    }


def _address(text: str | None) -> SocketAddress | None:
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    return SocketAddress(host.strip("[]"), int(port)) if sep and port.isdigit() else None


def live_trace(b: Bootstrap, rec: dict[str, Any], inbound: frozenset[str]) -> dict[str, Any]:
    dest = _address(rec.get("destination"))
    out: dict[str, Any] = {"observed": rec}
    if dest is None:
        out["steps"] = [["note", "no destination recorded"]]
        return out
    http = rec.get("method") is not None
    q = Question(dest, rec.get("host") if http else None, rec.get("path") or "/", inbound=rec.get("listener") in inbound)
    steps = [[what, text] for what, text in explain(b, q).steps]
    if http:
        steps.append(["note", "re-decided without the request's headers (they are not kept)"])
    out["steps"] = steps
    return out
