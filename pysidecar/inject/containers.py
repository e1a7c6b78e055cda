"""The two containers injection adds, built from template.yaml plus the pod's annotations.

Promises:
- `load_template()` reads the packaged template.yaml once; every build works on deep copies, so
  the template is never mutated.
- `init_container(...)` is the template's istio-init with `args` from
  `annotations.init_args` and the chosen image.
- `sidecar_container(...)` is the template's istio-proxy with, in order of precedence, the
  image from sidecar.istio.io/proxyImage or the flag; resources from
  sidecar.istio.io/proxy{CPU,Memory,CPULimit,MemoryLimit} when any is set (replacing the
  defaults, as Istio does); Istio's TPROXY adjustments (uid 0, gid 1337, NET_ADMIN); a
  postStart `pysidecar wait` when the application must wait for the proxy; `restartPolicy:
  Always` when it is a native sidecar.
- Bad resource quantities raise `AnnotationError` naming the annotation.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import yaml

from pysidecar.inject.annotations import AnnotationError

PROXY_IMAGE = "sidecar.istio.io/proxyImage"
PROXY_CPU = "sidecar.istio.io/proxyCPU"
PROXY_MEMORY = "sidecar.istio.io/proxyMemory"
PROXY_CPU_LIMIT = "sidecar.istio.io/proxyCPULimit"
PROXY_MEMORY_LIMIT = "sidecar.istio.io/proxyMemoryLimit"

# (annotation, requests|limits, resource)
_RESOURCE_ANNOTATIONS = (
    (PROXY_CPU, "requests", "cpu"),
    (PROXY_MEMORY, "requests", "memory"),
    (PROXY_CPU_LIMIT, "limits", "cpu"),
    (PROXY_MEMORY_LIMIT, "limits", "memory"),
)
# Kubernetes resource.Quantity: a decimal number with an SI, binary or exponent suffix.
_QUANTITY_RE = re.compile(r"^\+?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")

# Exec'd in the sidecar after it starts; kubelet starts the next container only when it returns.
WAIT_COMMAND = ["pysidecar", "wait"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class Template:
    init_container: Obj
    sidecar: Obj
    volumes: list[Obj]
    pod_annotations: dict[str, str]

    @property
    def init_name(self) -> str:
        return cast(str, self.init_container["name"])

    @property
    def sidecar_name(self) -> str:
        return cast(str, self.sidecar["name"])

    def volume_names(self) -> list[str]:
        return [cast(str, v["name"]) for v in self.volumes]

    def build_volumes(self, config_map: str | None, cert_secret: str = "") -> list[Obj]:
        out = copy.deepcopy(self.volumes)
        for volume in out:
            if config_map and "configMap" in volume:
                volume["configMap"]["name"] = config_map
            if "secret" in volume:
                volume["secret"]["secretName"] = cert_secret
        return out


@functools.cache
def load_template() -> Template:
    text = resources.files("pysidecar.inject").joinpath("template.yaml").read_text("utf-8")
    data = cast(Obj, yaml.safe_load(text))
    return Template(
        init_container=data["initContainer"],
        sidecar=data["sidecar"],
        volumes=data["volumes"],
        pod_annotations=data["podAnnotations"],
    )


def init_container(template: Template, args: list[str], image: str | None) -> Obj:
    container = copy.deepcopy(template.init_container)
    if image:
        container["image"] = image
    container["args"] = list(args)
    return container


def _resources(annotations: dict[str, str]) -> Obj | None:
    if not any(name in annotations for name, _, _ in _RESOURCE_ANNOTATIONS):
        return None
    out: dict[str, dict[str, str]] = {}
    for name, section, resource in _RESOURCE_ANNOTATIONS:
        if name not in annotations:
            continue
        value = str(annotations[name]).strip()
        if not _QUANTITY_RE.match(value):
            raise AnnotationError(name, value, "is not a Kubernetes quantity (e.g. 100m, 128Mi)")
        out.setdefault(section, {})[resource] = value
    return out


def sidecar_container(template: Template, annotations: dict[str, str], *, image: str | None,
                      mode: str, wait_for_proxy: bool, native: bool) -> Obj:  # fmt: skip
    container = copy.deepcopy(template.sidecar)
    chosen = annotations.get(PROXY_IMAGE) or image
    if chosen:
        container["image"] = chosen
    custom = _resources(annotations)
    if custom is not None:
        container["resources"] = custom
    # Istio's node metadata: `pysidecar run` makes virtualInbound transparent under TPROXY.
    container.setdefault("env", []).append({"name": "ISTIO_META_INTERCEPTION_MODE", "value": mode})
    if mode == "TPROXY":
        # TPROXY needs IP_TRANSPARENT on upstream sockets: root with NET_ADMIN. The loop guard
        # still holds through the gid rules (-g defaults to -u, 1337), as in Istio.
        security = container["securityContext"]
        security.update(runAsUser=0, runAsNonRoot=False)
        security["capabilities"]["add"] = ["NET_ADMIN"]
    if native:
        container["restartPolicy"] = "Always"
    elif wait_for_proxy:
        container["lifecycle"] = {"postStart": {"exec": {"command": list(WAIT_COMMAND)}}}
    return container
