"""Who owns which lab: marker files under /run/pysidecar-lab, and removal of labs by name.

Promises:
- A lab writes its marker `/run/pysidecar-lab/<labid>/owner.json` (owner pid + its start time,
  temp dir, persistence flag) *before* it creates anything, and removes it *last*; so every lab
  namespace on the machine that has our prefix and no live owner is garbage from a crash.
- `destroy(labid)` removes everything a lab may have left, by name and by pid: processes inside
  its namespaces, the namespaces, /etc/netns/<ns> dirs, its temp dir and its marker. It is
  idempotent and keeps going past individual failures.
- `cleanup_stale(prefix)` destroys only labs whose names start with `prefix` and whose owner
  process is gone (pid absent, or reused by another process). Persistent labs (the demo) are
  owned by nobody and left alone; `pysidecar lab down` removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

from pysidecar.lab.netns import ETC_NETNS_DIR, ip, list_namespaces
from pysidecar.lab.procs import is_alive, kill_namespace_pids, pid_start_time

RUN_DIR = "/run/pysidecar-lab"
OWNER_FILE = "owner.json"


@dataclass(frozen=True)
class Owner:
    labid: str
    pid: int
    start_time: int | None
    tmpdir: str | None
    persistent: bool = False

    def alive(self) -> bool:
        return is_alive(self.pid, self.start_time)


def marker_dir(labid: str) -> str:
    return os.path.join(RUN_DIR, labid)


def write_owner(labid: str, tmpdir: str | None, persistent: bool = False) -> Owner:
    """Record the calling process as the owner of `labid`; fail if the lab already exists."""
    pid = os.getpid()
    owner = Owner(labid, pid, pid_start_time(pid), tmpdir, persistent)
    os.makedirs(RUN_DIR, exist_ok=True)
    os.mkdir(marker_dir(labid))  # FileExistsError: another lab has this id
    with open(os.path.join(marker_dir(labid), OWNER_FILE), "w") as f:
        json.dump(asdict(owner), f)
    return owner


def read_owner(labid: str) -> Owner | None:
    try:
        with open(os.path.join(marker_dir(labid), OWNER_FILE)) as f:
            data = json.load(f)
        return Owner(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def lab_ids() -> list[str]:
    """Ids of all labs that have a marker directory."""
    try:
        return sorted(d for d in os.listdir(RUN_DIR) if os.path.isdir(marker_dir(d)))
    except FileNotFoundError:
        return []


def lab_namespaces(labid: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(labid + "-")]


def remove_namespace(ns: str) -> None:
    """Kill what lives in `ns`, delete it and its /etc/netns dir; quiet when already gone."""
    if ns in list_namespaces():
        kill_namespace_pids(ns)
        ip("netns", "delete", ns)
    shutil.rmtree(os.path.join(ETC_NETNS_DIR, ns), ignore_errors=True)


def destroy(labid: str) -> list[str]:
    """Remove every trace of `labid`; return the errors met (empty list: all gone)."""
    errors: list[str] = []
    owner = read_owner(labid)
    # Pod namespaces first, the switch last: deleting a pod drops its veth pair with it.
    names = sorted(lab_namespaces(labid), key=lambda ns: ns == f"{labid}-sw")
    etc = [d for d in _listdir(ETC_NETNS_DIR) if d.startswith(labid + "-")]
    for ns in [*names, *(d for d in etc if d not in names)]:
        try:
            remove_namespace(ns)
        except Exception as e:
            errors.append(f"{ns}: {e}")
    if owner is not None and owner.tmpdir:
        shutil.rmtree(owner.tmpdir, ignore_errors=True)
    if not errors:
        shutil.rmtree(marker_dir(labid), ignore_errors=True)
    return errors


def cleanup_stale(prefix: str = "psc") -> list[str]:
    """Destroy labs named `prefix*` whose owning process is gone; return the lab ids removed."""
    removed: list[str] = []
    for labid in lab_ids():
        if not labid.startswith(prefix):
            continue
        owner = read_owner(labid)
        if owner is None:
            # A marker dir without a readable owner: the crash hit while writing it, before
            # anything else existed (markers are written first). Nothing else to check.
            if _older_than(marker_dir(labid), seconds=60):
                destroy(labid)
                removed.append(labid)
            continue
        if owner.persistent or owner.alive():
            continue
        destroy(labid)
        removed.append(labid)
    return removed


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _older_than(path: str, seconds: float) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return time.time() - os.stat(path).st_mtime > seconds
    return False
