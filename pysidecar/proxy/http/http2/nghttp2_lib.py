"""The compiled libnghttp2 binding (nghttp2_ffi.py's `_pysidecar_nghttp2`), when this process may
use it.

Promises:
- `load()` returns the module (its `ffi` and `lib`) when the process runs the compiled build
  (`native.fresh_build()`: not PYSIDECAR_PURE, the build's stamp matches the sources, which
  include nghttp2_ffi.py) and the build holds the binding; else None, and `why()` says why. The
  HTTP/2 downstream codec then runs on the h2 library (http2/session.py chooses).
- Checked once per process; the module is loaded once.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from types import ModuleType

from pysidecar import native
from pysidecar.proxy.http.http2.nghttp2_ffi import MODULE

_state: list[ModuleType | str] = []  # [module] or [reason], once checked


def _find() -> ModuleType | str:
    directory = native.fresh_build()
    if directory is None:
        return f"not the compiled build ({native.status()})"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        file = directory / (MODULE + suffix)
        if file.is_file():
            spec = importlib.util.spec_from_file_location(MODULE, file)
            if spec is None or spec.loader is None:
                break
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[MODULE] = module
            return module
    return f"the build in {directory} has no {MODULE} (libnghttp2-dev missing when it was built?)"


def load() -> ModuleType | None:
    if not _state:
        _state.append(_find())
    found = _state[0]
    return found if isinstance(found, ModuleType) else None


def why() -> str:
    """'nghttp2' when loaded, else why not."""
    load()
    found = _state[0]
    return "nghttp2" if isinstance(found, ModuleType) else f"h2: {found}"
