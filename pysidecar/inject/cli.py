"""`pysidecar inject -f app.yaml [-o out.yaml]`: the command around `objects.inject_text`.

Promises:
- Reads the file (`-` or no `-f`: stdin), writes the injected YAML to `-o` (atomically: a
  temporary file renamed into place) or stdout. Exit 0.
- Bad YAML, a bad annotation value, an object that cannot be injected, an unreadable file or
  mesh config: one line on stderr naming the file, the document, the object and the problem;
  exit 2; nothing is written.
- Warnings (annotations where Istio would ignore them) go to stderr and do not fail the run.
- `--meshconfig FILE` reads Istio's MeshConfig (or the `istio` ConfigMap holding it under
  `data.mesh`) for `defaultConfig.holdApplicationUntilProxyStarts`, the mesh-wide default a
  pod's `proxy.istio.io/config` annotation overrides.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import yaml

from pysidecar.inject.objects import inject_text
from pysidecar.inject.pod import HOLD, InjectError, Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", default="-", metavar="FILE",
                        help="Kubernetes YAML to inject (default: stdin)")
    parser.add_argument("-o", "--output", default="-", metavar="FILE",
                        help="where to write the injected YAML (default: stdout)")
    parser.add_argument("--init-image", help="image of the istio-init container (default: template's)")
    parser.add_argument("--proxy-image", help="image of the istio-proxy container (default: template's)")
    parser.add_argument("--config-map", help="ConfigMap with the sidecar's config (default: pysidecar-config)")
    parser.add_argument("--cert-secret", metavar="NAME",
                        help="Secret with the workload certificate (cert-chain.pem, key.pem, root-cert.pem) "
                             "mounted at /etc/certs (default: istio.<service account>, optional)")
    parser.add_argument("--native-sidecar", action="store_true",
                        help="inject the proxy as a Kubernetes native sidecar (init container with "
                             "restartPolicy: Always); a pod's sidecar.istio.io/nativeSidecar wins")
    parser.add_argument("--meshconfig", metavar="FILE",
                        help="Istio MeshConfig YAML for defaultConfig.holdApplicationUntilProxyStarts")


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def mesh_hold_default(path: str) -> bool:
    """defaultConfig.holdApplicationUntilProxyStarts from a MeshConfig file (False if unset)."""
    try:
        mesh: Any = yaml.safe_load(_read(path))
    except yaml.YAMLError as exc:
        raise InjectError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(mesh, dict) and mesh.get("kind") == "ConfigMap":
        data = mesh.get("data") or {}
        raw = data.get("mesh", data.get("mesh.yaml", ""))
        try:
            mesh = yaml.safe_load(raw) if isinstance(raw, str) else None
        except yaml.YAMLError as exc:
            raise InjectError(f"{path}: data.mesh is not valid YAML: {exc}") from None
    if mesh is None:
        return False
    if not isinstance(mesh, dict):
        raise InjectError(f"{path}: expected a MeshConfig mapping")
    value = (mesh.get("defaultConfig") or {}).get(HOLD, False)
    if not isinstance(value, bool):
        raise InjectError(f"{path}: defaultConfig.{HOLD} must be true or false")
    return value


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".inject-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(args: argparse.Namespace) -> int:
    source = "<stdin>" if args.filename == "-" else args.filename
    warnings: list[str] = []
    try:
        settings = Settings(
            init_image=args.init_image,
            proxy_image=args.proxy_image,
            native_sidecar=args.native_sidecar,
            hold_application=mesh_hold_default(args.meshconfig) if args.meshconfig else False,
            config_map=args.config_map,
            cert_secret=args.cert_secret,
        )
        text = inject_text(_read(args.filename), settings, source, warnings)
    except InjectError as exc:
        message = str(exc)
        prefix = "" if message.startswith((source, str(args.meshconfig))) else f"{source}: "
        print(f"pysidecar inject: {prefix}{message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pysidecar inject: {exc.filename or source}: {exc.strerror}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"pysidecar inject: warning: {source}: {warning}", file=sys.stderr)
    try:
        _write(args.output, text)
    except OSError as exc:
        print(f"pysidecar inject: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
