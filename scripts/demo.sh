#!/usr/bin/env bash
# The README's first command: install what is missing, then `pysidecar demo`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/bootstrap.sh"
exec "$here/.venv/bin/python" -m pysidecar demo "$@"
