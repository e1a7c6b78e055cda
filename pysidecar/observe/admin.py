"""Envoy's admin endpoints on 127.0.0.1:15000, Istio's stats port (:15090) and readiness (:15021).

Promises:
- GET `/stats` (text `name: value`, `?filter=<regex>`, `?format=json|prometheus`, `?usedonly`),
  `/stats/prometheus` (Istio's tag extraction, `observe.prometheus`), `/ready` (`LIVE` 200
  once serving, `PRE_INITIALIZING` 503 before, `DRAINING` 503 after POST /healthcheck/fail
  or while stopping; POST /drain_listeners leaves it LIVE, as Envoy 1.40), `/server_info`,
  `/config_dump` (Envoy's envoy.admin.v3 dump of the loaded model, then the reload counters and
  the last rejected reload: file, YAML path, details, time), `/listeners` and `/clusters` (Envoy's text, or
  `?format=json`), `/explain?n=N` (pysidecar's: the last N requests / connections, what was
  observed and the decision trace `pysidecar explain` gives for them, JSON). POST-only `/quitquitquit`, `/logging?level=`, `/reset_counters`,
  `/drain_listeners`, `/healthcheck/fail`, `/healthcheck/ok`: any other method answers 405, as
  Envoy 1.40. `?filter=` is RE2 (linear time: a crafted pattern cannot stall admin).
- Stats and host counters shown are the sum over all workers at the moment of the request.
- `:15090` serves `/stats/prometheus` only; `:15021/healthz/ready` answers 200 when the config
  is loaded and every worker's listeners are up, else 503.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pysidecar import __version__
from pysidecar.explain.recent import RECENT, live_trace
from pysidecar.model import Bootstrap, TrafficDirection
from pysidecar.observe import admin_views, prometheus
from pysidecar.observe.config_dump import config_dump
from pysidecar.observe.host_stats import HostSnapshot
from pysidecar.observe.http_server import Handler, Request, Response
from pysidecar.observe.stats import Kind
from pysidecar.regex import Regex, re2_error

JSON = "application/json"
LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


class ProxyState(Protocol):
    """What the admin endpoints need of the running proxy (the main process implements it)."""

    bootstrap: Bootstrap
    started: float

    def reload_dump(self) -> dict[str, object] | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def server_state(self) -> str: ...

    async def merged_stats(self) -> dict[str, tuple[Kind, object]]: ...

    async def host_stats(self) -> HostSnapshot: ...

    async def reset_counters(self) -> None: ...

    async def recent(self, n: int) -> list[dict[str, object]]: ...

    async def drain_listeners(self) -> None: ...

    async def set_log_level(self, level: str) -> None: ...

    def quit(self) -> None: ...

    def set_healthy(self, healthy: bool) -> None: ...


def _post_only(action: Callable[[Request], Awaitable[Response]]) -> Handler:
    async def handler(req: Request) -> Response:
        if req.method != "POST":  # Envoy 1.40's answer (checked)
            return Response(405, f"Method {req.method} not allowed, POST required.")
        return await action(req)

    return handler


def _json(body: object) -> Response:
    return Response(200, json.dumps(body, indent=1) + "\n", JSON)


def prometheus_handler(state: ProxyState) -> Handler:
    async def handler(req: Request) -> Response:
        merged = await state.merged_stats()
        if req.arg("usedonly") is not None:
            merged = admin_views.used_only(merged)
        return Response(200, prometheus.render(merged), prometheus.CONTENT_TYPE)

    return handler


def admin_routes(state: ProxyState) -> dict[str, Handler]:
    prom = prometheus_handler(state)

    async def stats(req: Request) -> Response:
        if req.arg("format") == "prometheus":
            return await prom(req)
        merged = await state.merged_stats()
        if req.arg("usedonly") is not None:
            merged = admin_views.used_only(merged)
        names = sorted(merged)
        pattern = req.arg("filter")
        if pattern:
            # RE2, as Envoy: linear time in the names whatever the pattern, so a crafted
            # regex cannot stall admin, readiness and stats (Python's re can backtrack forever).
            problem = re2_error(pattern)
            if problem is not None:
                return Response(400, f"Invalid re2 regex: {problem}")
            rx = Regex(pattern)
            names = [n for n in names if rx.search(n)]
        if req.arg("format") == "json":
            return _json({"stats": [{"name": n, "value": admin_views.stat_value(*merged[n])} for n in names]})
        return Response(200, admin_views.stats_lines(names, merged))

    async def ready(req: Request) -> Response:
        now = state.server_state
        return Response(200 if now == "LIVE" else 503, f"{now}\n")

    async def server_info(req: Request) -> Response:
        uptime = int(time.time() - state.started)
        return _json(
            {
                "version": f"pysidecar/{__version__}",
                "state": state.server_state,
                "uptime_current_epoch": f"{uptime}s",
                "uptime_all_epochs": f"{uptime}s",
                "command_line_options": {"config_path": ",".join(state.bootstrap.sources)},
            }
        )

    async def dump(req: Request) -> Response:
        return _json(config_dump(state.bootstrap, state.started, state.reload_dump()))

    async def listeners(req: Request) -> Response:
        if req.arg("format") == "json":
            return _json(admin_views.listeners_json(state.bootstrap))
        return Response(200, admin_views.listeners_text(state.bootstrap))

    async def clusters(req: Request) -> Response:
        hosts = await state.host_stats()
        if req.arg("format") == "json":
            return _json(admin_views.clusters_json(state.bootstrap, hosts))
        return Response(200, admin_views.clusters_text(state.bootstrap, hosts))

    async def explain_(req: Request) -> Response:
        """The last N requests / connections with their decision traces (`pysidecar explain --live`)."""
        n_text = req.arg("n") or "10"
        if not n_text.isdigit() or not 1 <= int(n_text) <= RECENT:
            return Response(400, f"usage: /explain?n=<1..{RECENT}>\n")
        inbound = frozenset(x.name for x in state.bootstrap.listeners if x.traffic_direction is TrafficDirection.INBOUND)
        records = await state.recent(int(n_text))
        return _json([live_trace(state.bootstrap, r, inbound) for r in records])

    async def quit_(req: Request) -> Response:
        state.quit()
        return Response(200, "OK\n")

    async def logging_(req: Request) -> Response:
        level = req.arg("level")
        if level is None or level not in LOG_LEVELS:
            return Response(400, f"usage: /logging?level=<{'|'.join(LOG_LEVELS)}>\n")
        await state.set_log_level(level)
        return Response(200, f"active loggers:\n  pysidecar: {level}\n")

    async def reset(req: Request) -> Response:
        await state.reset_counters()
        return Response(200, "OK\n")

    async def drain(req: Request) -> Response:
        await state.drain_listeners()
        return Response(200, "OK\n")

    async def fail(req: Request) -> Response:
        state.set_healthy(False)
        return Response(200, "OK\n")

    async def ok(req: Request) -> Response:
        state.set_healthy(True)
        return Response(200, "OK\n")

    return {
        "/stats": stats,
        "/stats/prometheus": prom,
        "/ready": ready,
        "/server_info": server_info,
        "/config_dump": dump,
        "/listeners": listeners,
        "/clusters": clusters,
        "/explain": explain_,
        "/quitquitquit": _post_only(quit_),
        "/logging": _post_only(logging_),
        "/reset_counters": _post_only(reset),
        "/drain_listeners": _post_only(drain),
        "/healthcheck/fail": _post_only(fail),
        "/healthcheck/ok": _post_only(ok),
    }


def stats_routes(state: ProxyState) -> dict[str, Handler]:
    """Istio's :15090: Prometheus scrapes /stats/prometheus and nothing else is served."""
    return {"/stats/prometheus": prometheus_handler(state)}


def readiness_routes(state: ProxyState) -> dict[str, Handler]:
    async def healthz(req: Request) -> Response:
        return Response(200, "") if state.ready else Response(503, "not ready\n")

    return {"/healthz/ready": healthz}
