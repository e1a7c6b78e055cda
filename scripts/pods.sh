#!/usr/bin/env bash
# Real pods in podman: builds the images (deploy/Containerfile, init/Containerfile, the lab app),
# injects the sample pods with `pysidecar inject`, runs them and the ingress gateway with
# `podman kube play` on an internal network, checks them and removes them (deploy/pods/pods.py).
#   scripts/pods.sh [all|images|up|check|down]      all (the default) = images, up, check, down
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/bootstrap.sh"
cd "$here"
exec .venv/bin/python deploy/pods/pods.py "$@"
