#!/usr/bin/env bash
# Installs everything pysidecar's demo, tests and bench need on a Debian machine, as root.
# Idempotent and quiet when nothing is missing: it is called by every entry script.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"

need_apt=()
for pair in iptables:iptables ip:iproute2 nginx:nginx-light wrk:wrk curl:curl \
            h2load:nghttp2-client iperf3:iperf3 setpriv:util-linux pkill:procps \
            taskset:util-linux promtool:prometheus nc:netcat-openbsd openssl:openssl \
            podman:podman runc:runc catatonit:catatonit mmdebstrap:mmdebstrap; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# Debian's own interpreter: the proxy runs as uid 1337, which must be able to read it
# (an interpreter under /root, as pyenv installs it, is not readable by that uid).
py=/usr/bin/python3
[ -x "$py" ] || need_apt+=(python3)
# The real-pods run (scripts/pods.sh, tests/e2e/test_pods.py): podman with its netavark network
# backend (the pods' internal network), runc (crun refuses a hybrid cgroup layout), catatonit
# (podman builds its pod infra image from it: nothing is pulled) and mmdebstrap (the Debian base
# image where no registry answers).
[ -x /usr/lib/podman/netavark ] || need_apt+=(netavark)
"$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The compiled data path (mypyc): a C compiler and the interpreter's headers.
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc)
[ -f "/usr/include/python3.$("$py" -c 'import sys; print(sys.version_info[1])')/Python.h" ] \
  || need_apt+=(python3-dev)
# The HTTP/2 downstream codec's libnghttp2 binding (cffi, built with the compiled data path).
[ -f /usr/include/nghttp2/nghttp2.h ] || need_apt+=(libnghttp2-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian enables these services on install; the lab and the tests start their own instances.
systemctl disable --now nginx prometheus prometheus-node-exporter >/dev/null 2>&1 || true

stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "bootstrap: creating $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q -e "$here[dev]" >"$venv/pip-install.log" 2>&1 \
    || { cat "$venv/pip-install.log" >&2; exit 1; }
  touch "$stamp"
fi
# The data path compiled with mypyc into pysidecar/_native (~1 min), whenever it is stale:
# a stale build is never loaded (pysidecar/native.py), so this only restores the speed.
if ! "$venv/bin/pysidecar" native check >/dev/null 2>&1; then
  echo "bootstrap: compiling the data path (pysidecar native build)" >&2
  # A failed build leaves the data path as plain Python, which works: warn, do not stop here
  # (scripts/test.sh then fails its compiled pass, tests/unit/test_native.py).
  if "$venv/bin/pysidecar" native build >"$venv/native-build.log" 2>&1; then
    tail -1 "$venv/native-build.log" >&2
  else
    tail -20 "$venv/native-build.log" >&2
    echo "bootstrap: WARNING: the compiled build failed; the data path runs as plain Python" >&2
  fi
fi
chmod -R o+rX "$here" 2>/dev/null || true
