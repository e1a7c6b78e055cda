"""`pysidecar native build|check|status`: compile the data path with mypyc, or say if it is fresh.

Promises:
- `build` compiles pysidecar.native.MODULES as one mypyc group, in a scratch directory beside the
  build directory, writes the stamp (sha256 of every pysidecar source the listed modules import,
  transitively; the Python version) and renames the result into place, so a running process never
  sees half a build. Needs a C compiler and Python's headers (scripts/bootstrap.sh installs gcc and
  python3-dev) and mypy (the dev extra).
- `build` also compiles the libnghttp2 binding (proxy/http/http2/nghttp2_ffi.py, cffi API mode)
  into the same directory, its spec among the stamped sources; without libnghttp2's headers
  (libnghttp2-dev) it says so and the build goes on without it (the HTTP/2 downstream codec then
  runs on h2).
- `check` exits 0 when the build matches the sources, 1 (saying why) when it is stale or absent.
- `status` prints what this interpreter runs the listed modules as: `compiled` or `pure: <why>`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pysidecar import native


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("build", "check", "status"))
    parser.add_argument("--opt", default="3", choices=("0", "1", "2", "3"), help="C -O level")


def main(args: argparse.Namespace) -> int:
    if args.action == "build":
        where = build(args.opt)
        seconds = json.loads((where / native.STAMP).read_text())["seconds"]
        print(f"pysidecar native: {len(native.MODULES)} modules compiled into {where} in {seconds} s")
        return 0
    if args.action == "check":
        reason = native.stale_reason(native.build_dir())
        if reason is not None:
            print(f"pysidecar native: stale: {reason}")
        return 0 if reason is None else 1
    for name in native.MODULES:
        __import__(name)
    from pysidecar.proxy.http.http2 import nghttp2_lib

    print(f"{native.status()} (HTTP/2 downstream session: {nghttp2_lib.why()})")
    return 0


def closure(modules: Sequence[str]) -> list[Path]:
    """The listed modules and every pysidecar module they import, transitively (their types are
    what mypyc compiled against, so an edit to any of them makes the build stale)."""
    root = native.SOURCE_ROOT
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or name.split(".")[0] != "pysidecar":
            continue
        rel = Path(*name.split("."))
        path = root / rel.with_suffix(".py")
        if not path.is_file():
            path = root / rel / "__init__.py"
            if not path.is_file():
                continue  # `from pkg import name` where name is not a module
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents' __init__ run too
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
    return sorted(seen.values())


# Sources of the build that no listed module imports: the cffi binding's spec.
_EXTRA_STAMPED = ("pysidecar.proxy.http.http2.nghttp2_ffi",)


def _build_nghttp2(lib: Path, work: Path) -> None:
    """The libnghttp2 binding into `lib`; a missing compiler or header is reported, not fatal."""
    from pysidecar.proxy.http.http2 import nghttp2_ffi

    try:
        built = nghttp2_ffi.build(lib, work / "cffi")
    except Exception as e:  # cffi raises distutils' CompileError / LinkError, or VerificationError
        print(f"pysidecar native: libnghttp2 binding not built ({e}); HTTP/2 downstream runs on h2")
        return
    print(f"pysidecar native: libnghttp2 binding {built.name}")


def build(opt_level: str = "3") -> Path:
    """Compile native.MODULES with mypyc and install the result as the build directory."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    root = native.SOURCE_ROOT
    target = native.build_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Hashed before compiling: a file edited during the build leaves the build stale, not wrong.
    sources = {
        str(p.relative_to(root)): native.sha256(p) for p in closure((*native.MODULES, *_EXTRA_STAMPED))
    }
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".native-", dir=target.parent))
    cwd = os.getcwd()
    try:
        os.chdir(root)  # mypyc names the modules after their paths from the working directory
        extensions = mypycify(
            [str(Path(*m.split(".")).with_suffix(".py")) for m in native.MODULES],
            opt_level=opt_level,
            target_dir=str(work / "c"),
            group_name=native.GROUP,
        )
        dist = Distribution({"name": "pysidecar-native", "ext_modules": extensions})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_lib = str(work / "lib")
        cmd.build_temp = str(work / "tmp")
        cmd.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
        lib = work / "lib"
        _build_nghttp2(lib, work)
        stamp = {
            "modules": list(native.MODULES),
            "python": sys.version,
            "sources": sources,
            "seconds": f"{time.monotonic() - started:.1f}",
        }
        (lib / native.STAMP).write_text(json.dumps(stamp, indent=1, sort_keys=True))
        os.chmod(lib, 0o755)  # the proxy runs as uid 1337 in the lab
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        lib.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    return target
