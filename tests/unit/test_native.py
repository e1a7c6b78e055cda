"""The compiled data path (pysidecar/native.py): a fresh build is loaded, a stale one never.

The staleness tests copy the package with its real build (pysidecar/_native, made by
`pysidecar native build`) to a scratch directory, edit a source there, and import it in a fresh
interpreter: what runs must be the edited .py, not the old extension.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pysidecar
from pysidecar import native
from pysidecar.native_build import closure
from pysidecar.proxy.http.http2 import nghttp2_lib

PROBE = (
    "import pysidecar.proxy.http.headers as h, pysidecar.proxy.http.active_stream as s;"
    "from pysidecar import native;"
    "print(h.__file__.endswith('.so'), s.__file__.endswith('.so'), hasattr(h, 'EDITED'));"
    "print(native.status())"
)


def _fresh_build() -> Path:
    where = native.build_dir()
    reason = native.stale_reason(where)
    if reason is not None:
        if os.environ.get("PYSIDECAR_EXPECT") == "compiled":
            pytest.fail(f"scripts/test.sh asked for the compiled build: {reason}")
        pytest.skip(reason)
    return where


def test_the_build_running_is_the_one_asked_for() -> None:
    for name in native.MODULES:
        __import__(name)
    files = [str(sys.modules[m].__file__) for m in native.MODULES]
    expect = os.environ.get("PYSIDECAR_EXPECT")
    if os.environ.get("PYSIDECAR_PURE") == "1":
        assert expect != "compiled"
        assert native.status() == "pure: PYSIDECAR_PURE=1"
        assert all(f.endswith(".py") for f in files)
    elif native.stale_reason(native.build_dir()) is None:
        assert expect != "pure"
        assert native.status() == "compiled"
        assert all(f.endswith(".so") and "/_native/" in f for f in files)
        if expect == "compiled":
            # scripts/bootstrap.sh installs libnghttp2-dev, so the test command's compiled pass
            # must run the HTTP/2 downstream on libnghttp2, not quietly on the h2 fallback.
            assert nghttp2_lib.why() == "nghttp2"
    else:
        assert expect != "compiled", native.status()
        assert all(f.endswith(".py") for f in files)


def _copy(tmp_path: Path, build: Path) -> Path:
    """The package and its build, as a scratch tree importable with PYTHONPATH."""
    package = Path(pysidecar.__file__).parent
    shutil.copytree(package, tmp_path / "pysidecar", ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    shutil.copytree(build, tmp_path / "pysidecar" / "_native")
    return tmp_path


def _probe(tree: Path, **env: str) -> list[str]:
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("PYSIDECAR_")}
    run_env.update(PYTHONPATH=str(tree), **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tree, env=run_env, capture_output=True, text=True, check=True
    )
    assert str(tree) in subprocess.run(
        [sys.executable, "-c", "import pysidecar; print(pysidecar.__file__)"],
        cwd=tree, env=run_env, capture_output=True, text=True, check=True,
    ).stdout  # the copy is what is imported, not the editable install
    return out.stdout.splitlines()


def test_an_untouched_copy_runs_compiled(tmp_path: Path) -> None:
    tree = _copy(tmp_path, _fresh_build())
    assert _probe(tree) == ["True True False", "compiled"]


def test_an_edited_compiled_module_runs_as_python_and_so_do_the_others(tmp_path: Path) -> None:
    tree = _copy(tmp_path, _fresh_build())
    with (tree / "pysidecar/proxy/http/headers.py").open("a") as f:
        f.write("\nEDITED = 1\n")
    assert _probe(tree) == [
        "False False True",
        "pure: pysidecar/proxy/http/headers.py changed since the build",
    ]


def test_an_edited_module_the_compiled_ones_import_makes_the_build_stale(tmp_path: Path) -> None:
    tree = _copy(tmp_path, _fresh_build())
    with (tree / "pysidecar/model/http.py").open("a") as f:
        f.write("\n# an edit mypyc did not see\n")
    assert _probe(tree) == ["False False False", "pure: pysidecar/model/http.py changed since the build"]


def test_the_environment_switch_and_a_missing_build(tmp_path: Path) -> None:
    tree = _copy(tmp_path, _fresh_build())
    assert _probe(tree, PYSIDECAR_PURE="1") == ["False False False", "pure: PYSIDECAR_PURE=1"]
    (tree / "pysidecar/_native/stamp.json").unlink()
    lines = _probe(tree)
    assert lines[0] == "False False False"
    assert lines[1].startswith("pure: no build in ")


def test_the_stamp_covers_what_the_compiled_modules_import() -> None:
    root = native.SOURCE_ROOT
    files = {str(p.relative_to(root)) for p in closure(native.MODULES)}
    for name in native.MODULES:
        assert name.replace(".", "/") + ".py" in files
    assert {"pysidecar/model/http.py", "pysidecar/__init__.py", "pysidecar/proxy/http/__init__.py"} <= files
    assert not any(f.startswith("pysidecar/config/istio/compile") for f in files)
