"""deploy/ and init/: the manifests validate, say what the issue asks, and match the injector;
the Containerfiles (which cannot be built here: no container engine) have the right shape."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pysidecar.config.loader import load
from pysidecar.inject.cli import mesh_hold_default
from pysidecar.inject.containers import load_template
from pysidecar.inject.objects import inject_text
from pysidecar.inject.pod import Settings
from pysidecar.model.http import HttpConnectionManager

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = DEPLOY / "manifests"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
NAMESPACE = "pysidecar-demo"

YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_manifest_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(MANIFESTS.glob("*.yaml")) for d in docs(f)]


def workloads() -> list[dict[str, Any]]:
    return [d for d in all_manifest_docs() if d["kind"] == "Deployment"]


def test_there_is_something_to_check() -> None:
    assert {p.name for p in MANIFESTS.glob("*.yaml")} >= {
        "00-namespace.yaml", "10-config.yaml", "20-httpbin.yaml", "30-sleep.yaml"}  # fmt: skip


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(DEPLOY)) for p in YAML_FILES])
def test_every_manifest_validates_strictly(path: Path, version: str) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_namespace_and_no_rbac() -> None:
    objects = all_manifest_docs()
    (ns,) = [d for d in objects if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == NAMESPACE
    # The init container adds NET_ADMIN/NET_RAW: only the "privileged" Pod Security level admits it.
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in objects if d["kind"] != "Namespace")
    # Config comes from a mounted ConfigMap: the sidecar never talks to the API server.
    assert not [d for d in objects if d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]


@pytest.mark.parametrize("app", ["httpbin", "sleep"])
def test_injected_manifests_are_what_the_injector_makes(app: str) -> None:
    (generated,) = MANIFESTS.glob(f"*-{app}.yaml")
    settings = Settings(hold_application=mesh_hold_default(str(MANIFESTS / "10-config.yaml")))
    expected = list(yaml.safe_load_all(inject_text((DEPLOY / "apps" / f"{app}.yaml").read_text(), settings)))
    assert docs(generated) == expected, f"regenerate {generated.name} with pysidecar inject"
    assert list(yaml.safe_load_all(inject_text(generated.read_text(), settings))) == expected


@pytest.mark.parametrize("dep", workloads(), ids=lambda d: d["metadata"]["name"])
def test_each_app_has_the_init_container_and_the_sidecar(dep: dict[str, Any]) -> None:
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (init,) = spec["initContainers"]
    assert init["name"] == "istio-init"
    assert init["args"] == shlex.split("-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x \"\" -b '*' -d 15090,15021,15020")
    security = init["securityContext"]
    assert security["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert (security["runAsUser"], security["runAsNonRoot"]) == (0, False)
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False

    (proxy,) = [c for c in spec["containers"] if c["name"] == "istio-proxy"]
    security = proxy["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (1337, 1337, True)
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"} in proxy["ports"]
    assert set(proxy["resources"]) == {"requests", "limits"}
    assert proxy["args"] == ["-c", "/etc/pysidecar/"]
    assert {"name": "pysidecar-config", "mountPath": "/etc/pysidecar", "readOnly": True} in proxy["volumeMounts"]
    assert {"name": "pysidecar-config", "configMap": {"name": "pysidecar-config"}} in spec["volumes"]

    # The mesh config holds the app until the proxy is ready: proxy first, postStart wait.
    assert spec["containers"][0] is proxy
    assert proxy["lifecycle"]["postStart"]["exec"]["command"] == ["pysidecar", "wait"]

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "15090"
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    assert json.loads(annotations["sidecar.istio.io/status"])["containers"] == ["istio-proxy"]
    for container in spec["containers"]:
        assert set(container["resources"]) == {"requests", "limits"}, container["name"]


def test_config_map_holds_mesh_config_and_istio_resources() -> None:
    (cm,) = [d for d in all_manifest_docs() if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "pysidecar-config"
    mesh = yaml.safe_load(cm["data"]["mesh.yaml"])
    assert mesh["outboundTrafficPolicy"]["mode"] in ("ALLOW_ANY", "REGISTRY_ONLY")
    assert mesh["defaultConfig"]["holdApplicationUntilProxyStarts"] is True
    resources = [d for d in yaml.safe_load_all(cm["data"]["istio.yaml"]) if d]
    assert {r["kind"] for r in resources} == {"ServiceEntry", "VirtualService"}
    assert all(r["apiVersion"].startswith("networking.istio.io/") for r in resources)


def _sidecar_domains(tmp_path: Path, namespace: str) -> tuple[str, ...]:
    """The port-8000 domains a sidecar running deploy/'s ConfigMap (as mounted) serves."""
    (cm,) = [d for d in all_manifest_docs() if d["kind"] == "ConfigMap"]
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    lis = load([str(tmp_path)], namespace=namespace).listener("0.0.0.0_8000")
    assert lis is not None
    hcm = lis.filter_chains[0].filters[0]
    assert isinstance(hcm, HttpConnectionManager)
    return hcm.route_config.virtual_hosts[0].domains


def test_the_shipped_config_answers_to_the_short_name_in_its_namespace(tmp_path: Path) -> None:
    # A sidecar in pysidecar-demo (POD_NAMESPACE, as the manifests set it) reaches the
    # ServiceEntry host httpbin.pysidecar-demo.svc.cluster.local as `httpbin:8000`, as istiod's do.
    domains = _sidecar_domains(tmp_path, NAMESPACE)
    for d in ("httpbin:8000", "httpbin", "httpbin.pysidecar-demo:8000", "httpbin.pysidecar-demo.svc:8000"):
        assert d in domains
    # From another namespace, only the qualified names.
    other = _sidecar_domains(tmp_path, "default")
    assert "httpbin:8000" not in other and "httpbin.pysidecar-demo:8000" in other


# --- Containerfiles ---------------------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def last(instrs: list[tuple[str, str]], name: str) -> str:
    values = [v for k, v in instrs if k == name]
    assert values, f"no {name}"
    return values[-1]


def test_init_containerfile() -> None:
    path = ROOT / "init" / "Containerfile"
    instrs = instructions(path)
    assert instrs[0] == ("FROM", "python:3.11-slim")
    assert any(k == "RUN" and "apt-get install" in v and "iptables" in v for k, v in instrs)
    assert any(k == "RUN" and "pip install" in v for k, v in instrs)
    assert json.loads(last(instrs, "ENTRYPOINT")) == ["pysidecar", "init"]
    assert last(instrs, "USER").split(":")[0] in ("0", "root")
    assert f"-t {load_template().init_container['image']} " in path.read_text()


def test_sidecar_containerfile() -> None:
    path = DEPLOY / "Containerfile"
    instrs = instructions(path)
    assert instrs[0] == ("FROM", "python:3.11-slim")
    user_setup = " ".join(v for k, v in instrs if k == "RUN")
    assert "--gid 1337" in user_setup and "--uid 1337" in user_setup
    assert last(instrs, "USER") == "1337:1337"
    assert json.loads(last(instrs, "ENTRYPOINT")) == ["pysidecar", "run"]
    assert json.loads(last(instrs, "CMD")) == ["-c", "/etc/pysidecar/"]
    assert f"-t {load_template().sidecar['image']} " in path.read_text()


def test_template_is_shipped_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "inject/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["pysidecar"]
    assert any(dep.startswith("kubernetes-validate") for dep in pyproject["project"]["optional-dependencies"]["dev"])
