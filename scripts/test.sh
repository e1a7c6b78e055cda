#!/usr/bin/env bash
# The README's second command: install what is missing, lint, type-check, run every test
# (unit, end-to-end in network namespaces, conformance against real Envoy).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/bootstrap.sh
echo "== ruff" && .venv/bin/ruff check pysidecar tests
echo "== mypy (strict on pysidecar/)" && .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
