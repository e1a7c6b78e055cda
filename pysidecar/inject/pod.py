"""Inject one pod (its metadata and spec), like Istio's webhook does for a single Pod.

Promises:
- `wanted(metadata, spec)` is Istio's per-pod decision for kube-inject (policy enabled): no
  sidecar for hostNetwork pods; `sidecar.istio.io/inject` (label first, then annotation)
  injects when absent or y/yes/true/on, and skips on anything else ("false").
- `inject_pod(metadata, spec, settings)` mutates the given dicts in place and returns True, or
  returns False and leaves them untouched when injection is not wanted or already done (the
  pod carries `sidecar.istio.io/status`). Every check runs before the first change, so an error
  also leaves them untouched.
- Layout, as Istio's `reorderPod`: istio-init runs after the app's own init containers (they
  keep an uncaptured network); istio-proxy is the last container, or the first one with a
  postStart `pysidecar wait` when holdApplicationUntilProxyStarts is on; as a native sidecar it
  is the second init container (after istio-init) with `restartPolicy: Always`.
- The pod gets `sidecar.istio.io/status` (JSON: what was injected, Istio's shape),
  `kubectl.kubernetes.io/default-container` / `default-logs-container` (the first app
  container, so `kubectl exec/logs` keep pointing at the app) and the prometheus.io scrape
  annotations for :15090 unless the pod has its own.
- Errors raise `InjectError` (an `AnnotationError` for a bad annotation value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from pysidecar.inject import annotations as ann
from pysidecar.inject.containers import (
    Obj,
    Template,
    init_container,
    load_template,
    sidecar_container,
)
from pysidecar.model.tls import TLS_MODE_ISTIO, TLS_MODE_LABEL

INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"
PROXY_CONFIG = "proxy.istio.io/config"
NATIVE_SIDECAR = "sidecar.istio.io/nativeSidecar"
HOLD = "holdApplicationUntilProxyStarts"
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
DEFAULT_LOGS_CONTAINER = "kubectl.kubernetes.io/default-logs-container"
_YES = ("y", "yes", "true", "on")


class InjectError(ValueError):
    """The object cannot be injected; the message says why."""


@dataclass(frozen=True)
class Settings:
    """What the command line (and the mesh config) decide for every pod."""

    init_image: str | None = None
    proxy_image: str | None = None
    native_sidecar: bool = False  # default for pods without sidecar.istio.io/nativeSidecar
    hold_application: bool = False  # MeshConfig defaultConfig.holdApplicationUntilProxyStarts
    config_map: str | None = None  # ConfigMap holding the sidecar's config (template default)
    # Secret with the workload certificate (default: istio.<service account>, Istio's name).
    cert_secret: str | None = None


def wanted(metadata: Obj, spec: Obj) -> bool:
    if spec.get("hostNetwork"):
        return False  # the sidecar would capture the node's traffic; Istio never injects these
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    choice = labels.get(INJECT, annotations.get(INJECT, ""))
    return str(choice).strip() == "" or str(choice).strip().lower() in _YES


def _hold(annotations: dict[str, str], default: bool) -> bool:
    """holdApplicationUntilProxyStarts: proxy.istio.io/config overrides the mesh default."""
    if PROXY_CONFIG not in annotations:
        return default
    raw = annotations[PROXY_CONFIG]
    try:
        config = yaml.safe_load(raw) if isinstance(raw, str) else None
    except yaml.YAMLError as exc:
        raise ann.AnnotationError(PROXY_CONFIG, str(raw), f"is not YAML ({exc})") from None
    if config is None:
        return default
    if not isinstance(config, dict):
        raise ann.AnnotationError(PROXY_CONFIG, str(raw), "must be a ProxyConfig mapping")
    value = config.get(HOLD, default)
    if not isinstance(value, bool):
        raise ann.AnnotationError(PROXY_CONFIG, str(raw), f"{HOLD} must be true or false")
    return value


def _native(annotations: dict[str, str], default: bool) -> bool:
    if NATIVE_SIDECAR not in annotations:
        return default
    value = str(annotations[NATIVE_SIDECAR]).strip().lower()
    if value not in ("true", "false"):
        raise ann.AnnotationError(NATIVE_SIDECAR, value, "must be \"true\" or \"false\"")
    return value == "true"


def _names(items: list[Obj]) -> list[str]:
    return [str(item.get("name")) for item in items]


def _status(init_containers: list[Obj], containers: list[Obj], volumes: list[Obj]) -> str:
    status: dict[str, Any] = {
        "initContainers": _names(init_containers) or None,
        "containers": _names(containers) or None,
        "volumes": _names(volumes) or None,
        "imagePullSecrets": None,
        "revision": "default",
    }
    return json.dumps(status, separators=(",", ":"))


def _check_conflicts(spec: Obj, template: Template) -> None:
    taken = _names(spec.get("containers") or []) + _names(spec.get("initContainers") or [])
    for name in (template.init_name, template.sidecar_name):
        if name in taken:
            raise InjectError(f"the pod already has a container named {name!r} but no {STATUS} "
                              "annotation; remove it, or mark the pod sidecar.istio.io/inject: \"false\"")  # fmt: skip
    volumes = _names(spec.get("volumes") or [])
    for name in template.volume_names():
        if name in volumes:
            raise InjectError(f"the pod already has a volume named {name!r}")


def inject_pod(metadata: Obj, spec: Obj, settings: Settings) -> bool:
    annotations: dict[str, str] = metadata.get("annotations") or {}
    if STATUS in annotations or not wanted(metadata, spec):
        return False
    if not isinstance(spec.get("containers"), list) or not spec["containers"]:
        raise InjectError("the pod spec has no containers")
    template = load_template()

    # Everything that can fail, before anything changes.
    ann.validate(annotations)
    _check_conflicts(spec, template)
    mode = ann.interception_mode(annotations)
    native = _native(annotations, settings.native_sidecar)
    hold = _hold(annotations, settings.hold_application) and not native
    sidecar = sidecar_container(template, annotations, image=settings.proxy_image, mode=mode,
                                wait_for_proxy=hold, native=native)  # fmt: skip
    injected_init: list[Obj] = []
    if mode != "NONE":  # NONE: no interception at all, so no init container (Istio)
        injected_init.append(init_container(template, ann.init_args(annotations), settings.init_image))
    account = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    volumes = template.build_volumes(settings.config_map, settings.cert_secret or f"istio.{account}")

    app_containers: list[Obj] = spec["containers"]
    app_init: list[Obj] = spec.get("initContainers") or []
    if native:
        injected_init.append(sidecar)
        spec["initContainers"] = injected_init + app_init
        injected_containers: list[Obj] = []
    else:
        spec["initContainers"] = app_init + injected_init
        injected_containers = [sidecar]
        spec["containers"] = [sidecar, *app_containers] if hold else [*app_containers, sidecar]
    if not spec["initContainers"]:
        del spec["initContainers"]
    spec["volumes"] = (spec.get("volumes") or []) + volumes

    new = dict(annotations)
    first_app = str(app_containers[0].get("name"))
    new.setdefault(DEFAULT_CONTAINER, first_app)
    new.setdefault(DEFAULT_LOGS_CONTAINER, first_app)
    if "prometheus.io/scrape" not in annotations:
        new.update(template.pod_annotations)
    new[STATUS] = _status(injected_init, injected_containers, volumes)
    metadata["annotations"] = new
    # Istio's injector marks a pod with a sidecar: peers' auto mTLS picks endpoints by it.
    metadata["labels"] = {**(metadata.get("labels") or {}), TLS_MODE_LABEL: TLS_MODE_ISTIO}
    return True
