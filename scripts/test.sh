#!/usr/bin/env bash
# The README's second command: install what is missing, lint, type-check, then run every test
# (unit, end-to-end in network namespaces, conformance against real Envoy) on the compiled data
# path, and the unit and end-to-end data-path tests again on the same sources as plain Python.
# With arguments (pytest's), both passes run just those.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/bootstrap.sh   # also compiles the data path when its build is stale
echo "== ruff" && .venv/bin/ruff check pysidecar tests
echo "== mypy (strict on pysidecar/)" && .venv/bin/mypy
echo "== pytest, compiled data path ($(.venv/bin/pysidecar native status))"
# tests/unit/test_native.py fails the pass if the build is not the one asked for.
PYSIDECAR_EXPECT=compiled .venv/bin/pytest -q -p no:cacheprovider "$@"
pure=(tests/unit tests/e2e/test_http_path.py tests/e2e/test_tcp_path.py)
[ $# -gt 0 ] && pure=("$@")
echo "== pytest, plain Python (PYSIDECAR_PURE=1): ${pure[*]}"
PYSIDECAR_PURE=1 PYSIDECAR_EXPECT=pure exec .venv/bin/pytest -q -p no:cacheprovider "${pure[@]}"
