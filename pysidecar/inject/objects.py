"""Kubernetes YAML in, injected YAML out: find the pod templates, inject each, keep the rest.

Promises:
- `inject_text(text, settings)` reads a multi-document YAML stream (a `kind: List` counts as
  its items) and returns it with every pod template injected: Pods, Deployments, StatefulSets,
  DaemonSets, ReplicaSets, ReplicationControllers, Jobs (`spec.template`) and CronJobs
  (`spec.jobTemplate.spec.template`). Other objects, pods that opt out and pods already
  injected come back unchanged, so injecting twice equals injecting once.
- Output is YAML documents joined by `---`, keys in their original order; empty documents are
  dropped. Comments and anchors do not survive (the YAML is re-serialised, as by istioctl).
- Anything wrong raises `InjectError` naming the document, the object and the problem; nothing
  is written half-way, the caller gets either all of the output or the error.
- Only the pod template's metadata is read for annotations, as Istio's injector reads only the
  pod's; the one exception is `sidecar.istio.io/inject` opting out on the workload's own
  metadata, honoured because opting out is always safe.
- `warnings` collects what is legal but probably not meant: sidecar annotations on a workload's
  own metadata (where they have no effect) and Jobs whose sidecar would keep them from
  completing.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from pysidecar.inject.annotations import AnnotationError
from pysidecar.inject.containers import Obj, load_template
from pysidecar.inject.pod import INJECT, InjectError, Settings, inject_pod, wanted

# kind -> keys from the object to its pod template (an object with metadata and spec)
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
_POD_ANNOTATION_PREFIXES = ("traffic.sidecar.istio.io/", "sidecar.istio.io/", "proxy.istio.io/")


def label(obj: Any) -> str:
    """`Kind namespace/name`, for messages."""
    if not isinstance(obj, dict):
        return type(obj).__name__
    meta: Obj = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '<no kind>')} {namespace}{name}"


def _pod_template(obj: Obj, path: tuple[str, ...]) -> Obj:
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise InjectError(f"has no pod template at .{'.'.join(path)}")
    if node.get("metadata") is None:
        node["metadata"] = {}
    if not isinstance(node["metadata"], dict) or not isinstance(node.get("spec"), dict):
        raise InjectError(f"the pod template at .{'.'.join(path) or '<root>'} has no spec")
    if node["metadata"].get("annotations") is None:
        node["metadata"].pop("annotations", None)
    elif not isinstance(node["metadata"]["annotations"], dict):
        raise InjectError("metadata.annotations must be a mapping")
    return node


def _misplaced(obj: Obj, path: tuple[str, ...]) -> list[str]:
    if not path:
        return []
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return [name for name in annotations
            if name.startswith(_POD_ANNOTATION_PREFIXES) and name != INJECT]  # fmt: skip


def inject_object(obj: Any, settings: Settings, where: str, warnings: list[str]) -> Any:
    """The object, injected (a new object) or the very same one when there is nothing to do."""
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("kind")
    if kind == "List" and isinstance(obj.get("items"), list):
        items = [inject_object(item, settings, f"{where}, item {i}: {label(item)}", warnings)
                 for i, item in enumerate(obj["items"])]  # fmt: skip
        if all(new is old for new, old in zip(items, obj["items"], strict=True)):
            return obj
        return {**obj, "items": items}
    if not isinstance(kind, str) or kind not in POD_TEMPLATE_PATHS:
        return obj
    path = POD_TEMPLATE_PATHS[kind]
    if path and not wanted(obj.get("metadata") or {}, {}):
        return obj  # an opt-out on the workload itself is honoured too: opting out is always safe
    out = copy.deepcopy(obj)  # the input stays as it was, whatever happens
    try:
        template = _pod_template(out, path)
        injected = inject_pod(template["metadata"], template["spec"], settings)
    except (InjectError, AnnotationError) as exc:
        raise InjectError(f"{where}: {exc}") from None
    for name in _misplaced(obj, path):
        if name not in (template["metadata"].get("annotations") or {}):
            warnings.append(f"{where}: annotation {name} on the {kind}'s own metadata is ignored; "
                            f"put it on the pod template (.{'.'.join(path)}.metadata.annotations)")  # fmt: skip
    if injected and kind in ("Job", "CronJob") and _proxy_is_a_container(template["spec"]):
        warnings.append(f"{where}: the sidecar keeps running after the job's containers finish, so "
                        "the Job never completes; inject with --native-sidecar (Kubernetes 1.29+) "
                        "or have the job POST http://127.0.0.1:15000/quitquitquit when done")  # fmt: skip
    return out if injected else obj


def _proxy_is_a_container(spec: Obj) -> bool:
    return any(c.get("name") == load_template().sidecar_name for c in spec.get("containers") or [])


def inject_documents(documents: list[Any], settings: Settings, warnings: list[str]) -> list[Any]:
    out = []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        out.append(inject_object(doc, settings, f"document {index}: {label(doc)}", warnings))
    return out


def load_documents(text: str, source: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise InjectError(f"{source}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise InjectError(f"{source}: not valid YAML: {exc}") from None


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings (ConfigMap data, scripts) as `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # The emitter falls back to a quoted style by itself when a block cannot hold the value.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_documents(documents: list[Any]) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, explicit_start=True,
                         default_flow_style=False, width=1000)  # fmt: skip


def inject_text(text: str, settings: Settings, source: str = "<input>",
                warnings: list[str] | None = None) -> str:  # fmt: skip
    docs = inject_documents(load_documents(text, source), settings,
                            warnings if warnings is not None else [])  # fmt: skip
    return dump_documents(docs)
