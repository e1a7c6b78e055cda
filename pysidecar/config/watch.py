"""Hot reload: watch the files under `-c`, rebuild the config on change, hand it to the workers.

Promises:
- Every `interval` seconds (1 s) the files `-c` names are fingerprinted (path, mtime, size,
  inode; directories re-listed, so added and removed files count), plus the Envoy lds/cds files
  the config loaded. A change is parsed, validated and compiled in the main process, off the
  event loop; a config equal to the running one is not sent.
- A good config goes to `apply` (the Supervisor sends it to every worker, which swaps it
  atomically; open connections finish on the snapshot they started with).
- A bad config keeps the old one serving: the error (file, YAML path, resource) is logged,
  counted, and kept in `ReloadState` (`last_error` until a later reload succeeds,
  `last_rejected` for good) for the admin's /config_dump (`ReloadState.dump`). The same bad files are
  not re-reported until they change again.
- Counters use Envoy's names for file-based xDS (`listener_manager.lds.update_*`,
  `cluster_manager.cds.update_*`) plus `pysidecar.config_reload_rejected`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pysidecar.config.loader import load, watched_files
from pysidecar.config.node import ConfigError
from pysidecar.model import Bootstrap

if TYPE_CHECKING:  # a type only: config never imports observe at run time
    from pysidecar.observe.stats import Kind
from pysidecar.common.access_format import iso_time

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
# After a change is seen, wait this long for the writer to finish before reading (an editor or
# `kubectl cp` writes in several steps; a half-written file would be a spurious rejection).
SETTLE_TIME = 0.2

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(files: Sequence[str]) -> Fingerprint:
    out: list[tuple[str, int, int, int]] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            out.append((path, -1, -1, -1))
            continue
        out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(sorted(out))


RELOAD_DUMP_TYPE = "type.googleapis.com/pysidecar.admin.v1.ReloadConfigDump"


@dataclass(frozen=True, slots=True)
class RejectedConfig:
    """A reload that was refused: where (file, YAML path), why, and when."""

    file: str
    path: str
    message: str
    time: float


@dataclass
class ReloadState:
    """What the admin shows about reloads: counts and the last rejection."""

    attempts: int = 0
    successes: int = 0
    rejected: int = 0
    last_error: str | None = None  # the current state: None once a later reload succeeds
    last_error_time: float | None = None
    last_success_time: float | None = None
    last_rejected: RejectedConfig | None = None  # kept after later successes, for the dump

    def reject(self, e: ConfigError) -> None:
        now = time.time()
        self.rejected += 1
        self.last_error = str(e)
        self.last_error_time = now
        self.last_rejected = RejectedConfig(e.file, e.path, e.message, now)

    def dump(self) -> dict[str, object]:
        """The admin /config_dump entry: Envoy's update counters and, like Envoy's
        UpdateFailureState, the last rejected config (file, YAML path, details, time)."""
        out: dict[str, object] = {
            "@type": RELOAD_DUMP_TYPE,
            "update_attempt": self.attempts,
            "update_success": self.successes,
            "update_rejected": self.rejected,
        }
        if self.last_success_time is not None:
            out["last_update_success"] = iso_time(self.last_success_time)
        if (r := self.last_rejected) is not None:
            out["last_rejected_config"] = {
                "file": r.file,
                "yaml_path": r.path,
                "details": r.message,
                "last_update_attempt": iso_time(r.time),
                # A later reload succeeded: the running config is newer than this rejection.
                "superseded": self.last_error is None,
            }
        return out

    def stats(self) -> dict[str, tuple[Kind, object]]:
        out: dict[str, tuple[Kind, object]] = {"pysidecar.config_reload_rejected": ("counter", self.rejected)}
        for prefix in ("listener_manager.lds", "cluster_manager.cds"):
            out[f"{prefix}.update_attempt"] = ("counter", self.attempts)
            out[f"{prefix}.update_success"] = ("counter", self.successes)
            out[f"{prefix}.update_rejected"] = ("counter", self.rejected)
        return out


class ConfigWatcher:
    def __init__(
        self,
        paths: Sequence[str],
        current: Bootstrap,
        apply: Callable[[Bootstrap], Awaitable[None]],
        state: ReloadState | None = None,
        interval: float = DEFAULT_INTERVAL,
        loader: Callable[[Sequence[str]], Bootstrap] = load,
    ) -> None:
        self.paths = list(paths)
        self.current = current
        self.apply = apply
        self.state = state or ReloadState()
        self.interval = interval
        self.loader = loader
        self._seen = self._fingerprint()

    def _fingerprint(self) -> Fingerprint:
        try:
            files = watched_files(self.paths, self.current)
        except ConfigError:
            files = [p for p in self.paths if os.path.exists(p)]
        return fingerprint(files)

    async def check(self) -> bool:
        """One poll: reload when something changed. True when a new config was applied."""
        now = self._fingerprint()
        if now == self._seen:
            return False
        await asyncio.sleep(SETTLE_TIME)
        now = self._fingerprint()
        self._seen = now
        self.state.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            new = await loop.run_in_executor(None, self.loader, self.paths)
        except ConfigError as e:
            self.state.reject(e)
            log.error("config reload rejected, keeping the running config: %s", e)
            return False
        self.state.successes += 1
        self.state.last_error = None
        self.state.last_success_time = time.time()
        # The xDS files the new config loads may differ: fingerprint what it depends on now.
        self._seen = fingerprint(watched_files(self.paths, new))
        if new == self.current:
            log.info("config files changed; the compiled config is the same")
            return False
        self.current = new
        log.info(
            "config reloaded: %d listeners, %d clusters from %d files",
            len(new.listeners), len(new.clusters), len(new.sources),
        )  # fmt: skip
        await self.apply(new)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a reload bug must not stop the watcher (or the proxy)
                log.exception("config reload failed")
