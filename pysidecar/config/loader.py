"""Turn what `-c` points at into one `Bootstrap`.

Promises:
- No path: the embedded standard sidecar (`config.sidecar.standard_sidecar`).
- `-c` takes files and directories (read recursively, `*.yaml` / `*.yml` / `*.json`, hidden
  names skipped, in sorted order), each file holding one or more YAML documents.
- A single Envoy v3 bootstrap (and nothing else): exactly that config, nothing added. Its
  `dynamic_resources.lds_config` / `cds_config` with a `path_config_source` (or `path`) load the
  listeners / clusters from those files (Envoy's file-based xDS), which are then watched too.
- Istio documents (mesh config, the `istio` ConfigMap, ServiceEntry, VirtualService,
  DestinationRule, Sidecar, Kubernetes Service / EndpointSlice / Endpoints) are compiled onto
  the standard sidecar by `config.istio.compile`; the workload's labels, when given, add the
  inbound chains and clusters of the Services selecting it.
- Anything unreadable, malformed or unsupported raises `ConfigError` naming the file, the YAML
  path and (for Istio) the resource; nothing is half-loaded.
- `interception_mode` (`pysidecar run --interception-mode`) shapes the standard sidecar and
  compiled Istio configs as istiod would (`sidecar.with_interception_mode`); an Envoy
  bootstrap says for itself what its listeners are (`transparent: true`).
- `watched_files(paths, bootstrap)` lists what a reload has to look at, the workload
  certificate files included: a rotated certificate is a reload (a bad one is rejected and
  the old identity keeps serving).
- `cert_dir` (Istio's file-mounted certificates, `pysidecar run --cert-dir`): the workload
  identity Istio YAML is compiled with (config/identity.py). Named explicitly, its files must
  load; the default /etc/certs without any of them means no identity (plaintext mesh).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

from pysidecar.config import envoy
from pysidecar.config.envoy_filters import BOOTSTRAP_CHECKS
from pysidecar.config.identity import DEFAULT_CERT_DIR, load_identity
from pysidecar.config.istio.compile import compile_config
from pysidecar.config.istio.documents import collect
from pysidecar.config.istio.gateway_compile import compile_gateway, router_skeleton
from pysidecar.config.istio.mesh import is_mesh_document
from pysidecar.config.istio.meta import DEFAULT_NAMESPACE
from pysidecar.config.node import ConfigError, Node, load_documents
from pysidecar.config.sidecar import standard_sidecar, with_interception_mode
from pysidecar.model import Bootstrap, Cluster, Listener, MeshConfig

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
ENVOY_BOOTSTRAP_KEYS = frozenset(
    {"static_resources", "dynamic_resources", "admin", "node", "staticResources", "dynamicResources"}
)
LISTENER_TYPE = "envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "envoy.config.cluster.v3.Cluster"


def config_files(paths: Sequence[str]) -> list[str]:
    """The files `-c` names: files as given, directories walked in sorted order."""
    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            if not os.path.exists(path):
                raise ConfigError(path, "", "no such file or directory")
            out.append(path)
            continue
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out.extend(
                os.path.join(root, f) for f in sorted(files) if f.endswith(CONFIG_SUFFIXES) and not f.startswith(".")
            )
    return list(dict.fromkeys(out))


def _is_envoy_bootstrap(value: object) -> bool:
    return isinstance(value, dict) and "kind" not in value and bool(ENVOY_BOOTSTRAP_KEYS & set(value))


def _is_xds_file(value: object) -> bool:
    """An Envoy file-based xDS resource file (lds.yaml / cds.yaml): loaded via its bootstrap."""
    return isinstance(value, dict) and "resources" in value and "kind" not in value


def load(
    paths: Sequence[str],
    workload_labels: Mapping[str, str] | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    mesh_access_log: bool = True,
    interception_mode: str = "REDIRECT",
    mode: str = "sidecar",
    cert_dir: str | None = None,
) -> Bootstrap:
    """The config `paths` name; `workload_labels` (the pod's labels) give Istio YAML its inbound
    side (or, with `mode` "router", select its Gateways) and `namespace` (the pod's) its short
    host names; `mesh_access_log` False leaves the MeshConfig's access log out;
    `interception_mode` TPROXY makes a sidecar's virtualInbound transparent. None of them mean
    anything to an Envoy bootstrap."""
    if not paths:
        if mode == "router":
            return router_skeleton(MeshConfig())
        return with_interception_mode(standard_sidecar(), interception_mode)
    docs = [d for f in config_files(paths) for d in load_documents(f)]
    envoy_docs = [d for d in docs if _is_envoy_bootstrap(d.value) and not is_mesh_document(d.value)]
    istio_docs = [d for d in docs if d not in envoy_docs and not _is_xds_file(d.value)]
    if envoy_docs:
        if len(envoy_docs) > 1:
            envoy_docs[1].fail(f"a second Envoy bootstrap (the first is {envoy_docs[0].file})")
        if istio_docs:
            istio_docs[0].fail(
                f"Istio resources cannot be mixed with an Envoy bootstrap ({envoy_docs[0].file}); "
                "give one or the other"
            )
        return envoy_bootstrap(envoy_docs[0])
    if not istio_docs:
        raise ConfigError(paths[0], "", "no configuration documents found")
    if mode == "router":
        return compile_gateway(collect(istio_docs), workload_labels, mesh_access_log)
    cfg = collect(istio_docs)
    identity = load_identity(cert_dir or DEFAULT_CERT_DIR, required=cert_dir is not None)
    return with_interception_mode(
        compile_config(cfg, workload_labels, namespace, mesh_access_log, identity), interception_mode
    )


# -- Envoy file-based dynamic resources ------------------------------------------------------


def _xds_path(node: Node, bootstrap_file: str) -> str:
    f = node.fields("path_config_source", "path", "resource_api_version", "initial_fetch_timeout")
    if (pcs := f.get("path_config_source")) is not None:
        pf = pcs.fields("path", "watched_directory")
        path = pf.require("path").string()
    elif (p := f.get("path")) is not None:
        path = p.string()
    else:
        node.fail("only file-based config sources (path_config_source) are supported")
    if not os.path.isabs(path) and not os.path.exists(path):
        # Envoy resolves against its working directory; next to the bootstrap is the other
        # place people keep these files, so look there too.
        path = os.path.join(os.path.dirname(bootstrap_file), path)
    return path


def _resources(path: str, want: str) -> list[Node]:
    docs = load_documents(path)
    if len(docs) != 1:
        raise ConfigError(path, "", f"expected one YAML document with 'resources', got {len(docs)}")
    f = docs[0].fields("version_info", "resources", "type_url", "nonce")
    out: list[Node] = []
    for r in f.list("resources"):
        type_name = r.type_url()
        if type_name != want:
            r.fail(f"expected @type {want}, got {type_name}")
        body = {k: v for k, v in r.value.items() if k != "@type"}
        out.append(Node(body, r.file, r.path))
    return out


def envoy_bootstrap(doc: Node) -> Bootstrap:
    value = dict(doc.value)
    dyn = value.pop("dynamic_resources", None) or value.pop("dynamicResources", None)
    b = envoy.bootstrap(Node(value, doc.file, doc.path))
    if dyn is None:
        return b
    f = doc.child("dynamic_resources", dyn).fields("lds_config", "cds_config", "ads_config")
    if (ads := f.get("ads_config")) is not None:
        ads.fail("ADS (a gRPC management server) is not supported; use path_config_source files")
    listeners: list[Listener] = list(b.listeners)
    clusters: list[Cluster] = list(b.clusters)
    sources = list(b.sources)
    if (lds := f.get("lds_config")) is not None:
        path = _xds_path(lds, doc.file)
        listeners += [envoy.listener(n, i) for i, n in enumerate(_resources(path, LISTENER_TYPE))]
        sources.append(path)
    if (cds := f.get("cds_config")) is not None:
        path = _xds_path(cds, doc.file)
        clusters += [envoy.cluster(n) for n in _resources(path, CLUSTER_TYPE)]
        sources.append(path)
    result = replace(b, listeners=tuple(listeners), clusters=tuple(clusters), sources=tuple(sources))
    envoy.check_references(result, doc)
    for check in BOOTSTRAP_CHECKS:
        check(result, doc)
    return result


def watched_files(paths: Sequence[str], bootstrap: Bootstrap) -> list[str]:
    """Every file a reload depends on: what `-c` names now, plus the xDS files loaded."""
    found = config_files(paths) if paths else []
    extra = [s for s in bootstrap.sources if os.path.exists(s)]
    if bootstrap.identity is not None:
        extra += list(bootstrap.identity.snapshot())
    return list(dict.fromkeys(found + extra))
