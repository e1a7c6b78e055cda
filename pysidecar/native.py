"""The compiled data path: which modules mypyc compiles, where the build lives, when it is used.

The hot-path modules listed in `MODULES` are ordinary typed Python. `pysidecar native build`
compiles them with mypyc (part of mypy) into C extensions in a build directory of their
own (`pysidecar/_native/`, or `$PYSIDECAR_NATIVE_DIR`), never next to the sources: Python's import
system prefers an extension module to a .py of the same name, so a stale .so beside an edited .py
would silently run the old code.

Promises:
- `install()` (run by `import pysidecar`) puts a finder (a meta path finder: `find_spec`) in front of the import system. The first
  time a listed module is imported, the finder checks the build's stamp once per process: the
  sha256 of every pysidecar source file the build was typed against (the listed modules and the
  pysidecar modules they import, transitively), the Python version and mypy's version. Only when
  all of them match are the listed modules loaded from the build; otherwise every one of them runs
  from its .py (all or nothing: compiled modules call each other directly, so a mix is never
  loaded), and `status()` says why.
- `PYSIDECAR_PURE=1` in the environment: plain Python, no finder (workers inherit it).
- The build itself is `pysidecar native build` (pysidecar/native_build.py).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

# Compiled together into one shared library (mypyc's group); each is a module, not a package.
MODULES: Final = (
    "pysidecar.proxy.http.headers",
    "pysidecar.proxy.http.header_validation",
    "pysidecar.proxy.http.codec",
    "pysidecar.proxy.http.downstream",
    "pysidecar.proxy.http.compiled",
    "pysidecar.proxy.http.local_reply",
    "pysidecar.proxy.http.edge",
    "pysidecar.proxy.http.request_id",
    "pysidecar.proxy.http.active_stream",
    "pysidecar.proxy.http.filter",
    "pysidecar.proxy.http.filters.base",
    "pysidecar.proxy.http.filters.fault",
    "pysidecar.proxy.http.filters.lua",
    "pysidecar.proxy.http.router_filter",
    "pysidecar.proxy.http.upstream_request",
    "pysidecar.proxy.http.route_table",
    "pysidecar.proxy.http.response_head",
    "pysidecar.proxy.http.http1.wire",
    "pysidecar.proxy.http.http1.response_encoder",
    "pysidecar.proxy.http.http1.request_decoder",
    "pysidecar.proxy.http.http1.server_codec",
    "pysidecar.proxy.http.http1.client_codec",
    "pysidecar.proxy.http.hpack_encoder",
    "pysidecar.proxy.http.h2_limits",
    "pysidecar.proxy.http.http2.request_decoder",
    "pysidecar.proxy.http.http2.response_encoder",
    "pysidecar.proxy.http.http2.server_codec",
    "pysidecar.proxy.http.http2.nghttp2_session",
    "pysidecar.common.access_format",
    "pysidecar.common.stream_info",
    "pysidecar.observe.access_log",
    "pysidecar.observe.histogram",
    "pysidecar.observe.istio_metrics",
    "pysidecar.observe.host_stats",
    "pysidecar.proxy.http.stream_state",
    "pysidecar.proxy.http.xfcc",
    "pysidecar.proxy.lb",
    "pysidecar.proxy.loop_detect",
    "pysidecar.proxy.cluster_manager",
    "pysidecar.proxy.http.conn_pool",
    "pysidecar.proxy.http.http1.conn_pool",
    "pysidecar.proxy.splice",
    "pysidecar.proxy.tcp_proxy",
)
GROUP: Final = "pysidecar_native"  # the shared library is `pysidecar_native__mypyc`
STAMP: Final = "stamp.json"
PACKAGE_DIR: Final = Path(__file__).resolve().parent
SOURCE_ROOT: Final = PACKAGE_DIR.parent


def build_dir() -> Path:
    return Path(os.environ.get("PYSIDECAR_NATIVE_DIR") or PACKAGE_DIR / "_native")


def sha256(path: Path) -> str:
    import hashlib  # here, not at the top: every pysidecar process imports this module

    return hashlib.sha256(path.read_bytes()).hexdigest()


def stale_reason(directory: Path) -> str | None:
    """None when the build in `directory` matches the sources; else why it does not."""
    import json

    try:
        stamp = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return f"no build in {directory} (pysidecar native build)"
    if stamp.get("modules") != list(MODULES):
        return "the build compiled another module list"
    if stamp.get("python") != sys.version:
        return "the build is for another Python"
    for rel, digest in stamp.get("sources", {}).items():
        path = SOURCE_ROOT / rel
        try:
            if sha256(path) != digest:
                return f"{rel} changed since the build"
        except OSError:
            return f"{rel} is gone since the build"
    for name in (*MODULES, f"{GROUP}__mypyc"):
        if _extension(directory, name) is None:
            return f"the build has no extension for {name}"
    return None


def _extension(directory: Path, name: str) -> Path | None:
    base = directory.joinpath(*name.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


class _Finder:
    """Answers for the listed modules (and their shared library) while the build is fresh."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names = frozenset((*MODULES, f"{GROUP}__mypyc"))
        self.reason: str | None = None
        self.checked = False

    def fresh(self) -> bool:
        if not self.checked:
            self.checked = True
            self.reason = stale_reason(self.directory)
        return self.reason is None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names or not self.fresh():
            return None
        file = _extension(self.directory, fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        spec = importlib.machinery.ModuleSpec(fullname, loader, origin=str(file))
        spec.has_location = True  # sets __file__
        return spec


_finder: _Finder | None = None


def install() -> None:
    global _finder
    if os.environ.get("PYSIDECAR_PURE", "") not in ("", "0") or _finder is not None:
        return
    _finder = _Finder(build_dir())
    sys.meta_path.insert(0, _finder)


def fresh_build() -> Path | None:
    """The build directory when this process runs the compiled build (not PYSIDECAR_PURE, the
    stamp matches), else None: other compiled artefacts of the build (the libnghttp2 binding,
    proxy/http/http2/nghttp2_lib.py) are used on the same terms."""
    if _finder is None or not _finder.fresh():
        return None
    return _finder.directory


def status() -> str:
    """'compiled', or 'pure: <why>': what the listed modules run as in this process."""
    if _finder is None:
        return "pure: PYSIDECAR_PURE=1"
    if not _finder.fresh():
        return f"pure: {_finder.reason}"
    loaded = [sys.modules[m] for m in MODULES if m in sys.modules]
    if any(not str(getattr(m, "__file__", "")).endswith(".so") for m in loaded):
        return "pure: imported before the finder"
    return "compiled"
