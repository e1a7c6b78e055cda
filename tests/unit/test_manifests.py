"""deploy/ and init/: the manifests validate, say what the issue asks, and match the injector;
the Containerfiles have the right shape (tests/e2e/test_pods.py builds and runs them)."""

from __future__ import annotations

import argparse
import json
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pysidecar.common.workload import resolve_labels
from pysidecar.config.loader import load
from pysidecar.inject.cli import mesh_hold_default
from pysidecar.inject.containers import load_template
from pysidecar.inject.objects import inject_text
from pysidecar.inject.pod import Settings
from pysidecar.model import Bootstrap, ClusterType, SocketAddress
from pysidecar.model.http import HttpConnectionManager
from pysidecar.proxy import supervisor as run
from tests.tlscerts import SeedCerts, tls_secret

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
    """The injected Deployments (the ingress gateway is a proxy itself, not injected)."""
    return [
        d for d in all_manifest_docs()
        if d["kind"] == "Deployment" and "sidecar.istio.io/status" in d["spec"]["template"]["metadata"]["annotations"]
    ]  # fmt: skip


def config_map(name: str) -> dict[str, Any]:
    (cm,) = [d for d in all_manifest_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return cm


def test_there_is_something_to_check() -> None:
    assert {p.name for p in MANIFESTS.glob("*.yaml")} >= {
        "00-namespace.yaml", "10-config.yaml", "20-httpbin.yaml", "30-sleep.yaml", "40-ingressgateway.yaml"}  # fmt: skip
    assert {d["metadata"]["name"] for d in workloads()} == {"httpbin", "sleep"}


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
    cm = config_map("pysidecar-config")
    mesh = yaml.safe_load(cm["data"]["mesh.yaml"])
    assert mesh["outboundTrafficPolicy"]["mode"] in ("ALLOW_ANY", "REGISTRY_ONLY")
    assert mesh["defaultConfig"]["holdApplicationUntilProxyStarts"] is True
    resources = [d for d in yaml.safe_load_all(cm["data"]["istio.yaml"]) if d]
    assert {r["kind"] for r in resources} == {"ServiceEntry", "VirtualService"}
    assert all(r["apiVersion"].startswith("networking.istio.io/") for r in resources)


def _sidecar_domains(tmp_path: Path, namespace: str) -> tuple[str, ...]:
    """The port-8000 domains a sidecar running deploy/'s ConfigMap (as mounted) serves."""
    for name, text in config_map("pysidecar-config")["data"].items():
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


# --- the ingress gateway (40-ingressgateway.yaml) ---------------------------------------------

GATEWAY_FILE = MANIFESTS / "40-ingressgateway.yaml"
GATEWAY_LABELS = {"istio": "ingressgateway"}
HTTPBIN_CLUSTER = f"outbound|8000||httpbin.{NAMESPACE}.svc.cluster.local"


def gateway_object(kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs(GATEWAY_FILE) if d["kind"] == kind]
    return found


def gateway_container() -> dict[str, Any]:
    (container,) = gateway_object("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def gateway_args() -> argparse.Namespace:
    """The container's args as `pysidecar run` (the image's entrypoint) parses them."""
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(gateway_container()["args"])


def gateway_config_dir(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    """The gateway's -c directory as the pod sees it: the ConfigMap's keys as files (plus
    `extra`, e.g. the credentials Secret's keys, which the projected volume adds)."""
    volume = gateway_volume()
    (cm_name,) = [s["configMap"]["name"] for s in volume["projected"]["sources"] if "configMap" in s]
    d = tmp_path / "etc-pysidecar"
    d.mkdir()
    for name, text in {**config_map(cm_name)["data"], **(extra or {})}.items():
        (d / name).write_text(text)
    return d


def gateway_volume() -> dict[str, Any]:
    """The volume mounted where the args' `-c` points."""
    (config,) = gateway_args().config
    pod = gateway_object("Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in gateway_container()["volumeMounts"] if m["mountPath"].rstrip("/") == config.rstrip("/")]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def compile_gateway_dir(d: Path) -> Bootstrap:
    args = gateway_args()
    return load([str(d)], resolve_labels(args.workload_labels), namespace=NAMESPACE, mode=args.mode)


def http_routes(b: Bootstrap, listener: str) -> dict[str, dict[str, str | None]]:
    """virtual host → {path prefix → cluster} of the listener's plain-HTTP chain."""
    lis = b.listener(listener)
    assert lis is not None, f"no listener {listener}: {[x.name for x in b.listeners]}"
    (chain,) = [c for c in lis.filter_chains if c.transport_socket is None]
    hcm = chain.terminal_filter
    assert isinstance(hcm, HttpConnectionManager)
    assert hcm.route_config.name == f"http.{lis.address.port}"
    return {
        v.name: {r.match.prefix or "": r.route.cluster if r.route else None for r in v.routes}
        for v in hcm.route_config.virtual_hosts
    }


def test_gateway_runs_pysidecar_router_mode_from_the_configmap() -> None:
    container = gateway_container()
    assert container["image"] == load_template().sidecar["image"]  # the image deploy/Containerfile builds
    assert "command" not in container  # the image's entrypoint: `pysidecar run`
    args = gateway_args()
    assert args.mode == "router"
    assert resolve_labels(args.workload_labels) == GATEWAY_LABELS
    assert args.config == ["/etc/pysidecar/"]
    sources = gateway_volume()["projected"]["sources"]
    assert [s["configMap"]["name"] for s in sources if "configMap" in s] == ["istio-ingressgateway-config"]
    # TLS credentials come from an optional Secret: the gateway starts without one.
    assert [s["secret"] for s in sources if "secret" in s] == [{"name": "istio-ingressgateway-credentials", "optional": True}]


def test_gateway_config_compiles_to_the_seed_routes(tmp_path: Path) -> None:
    b = compile_gateway_dir(gateway_config_dir(tmp_path))
    # Port 80 of the Gateway is bound at the Service's targetPort, as istiod does for
    # istio-ingressgateway; only that listener (no virtualOutbound / virtualInbound).
    assert [x.name for x in b.listeners] == ["0.0.0.0_8080"]
    vhosts = http_routes(b, "0.0.0.0_8080")
    assert vhosts == {"httpbin.example.com:80": {"/status": HTTPBIN_CLUSTER, "/delay": HTTPBIN_CLUSTER}}
    cluster = b.cluster(HTTPBIN_CLUSTER)
    assert cluster is not None and cluster.type is ClusterType.STRICT_DNS
    assert [e.address for e in cluster.endpoints] == [SocketAddress(f"httpbin.{NAMESPACE}.svc.cluster.local", 8000)]
    # mesh.yaml: the access log goes to the container's stdout.
    lis = b.listener("0.0.0.0_8080")
    assert lis is not None
    assert [a.path for c in lis.filter_chains for f in c.filters for a in f.access_log] == ["/dev/stdout"]


def test_gateway_deployment_and_service_agree_with_the_compile(tmp_path: Path) -> None:
    b = compile_gateway_dir(gateway_config_dir(tmp_path))
    dep, svc = gateway_object("Deployment"), gateway_object("Service")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert {"istio": "ingressgateway", "app": "istio-ingressgateway"}.items() <= pod_labels.items()
    assert pod_labels["sidecar.istio.io/inject"] == "false"
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    workload = resolve_labels(gateway_args().workload_labels)
    assert workload.items() <= pod_labels.items()
    # The compiler maps 80 → 8080 only for a Service whose selector the workload labels satisfy.
    assert svc["spec"]["selector"].items() <= workload.items()
    # The compiler reads the Service from the ConfigMap: it is the one applied.
    (copy,) = [d for d in yaml.safe_load_all(config_map("istio-ingressgateway-config")["data"]["services.yaml"])
               if d and d["kind"] == "Service"]  # fmt: skip
    assert copy == svc
    assert svc["spec"]["type"] in ("LoadBalancer", "NodePort")
    by_name = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert by_name == {"http2": (80, 8080), "https": (443, 8443), "status-port": (15021, 15021)}
    container_ports = {p["name"]: p["containerPort"] for p in gateway_container()["ports"]}
    for name, (_, target) in by_name.items():
        assert container_ports[name] == target, name
    # Every listener the compile binds is a port the container declares and the Service targets,
    # and unprivileged (>= 1024): the container needs no NET_BIND_SERVICE.
    for lis in b.listeners:
        assert lis.address.port in container_ports.values() and lis.address.port >= 1024
        assert lis.address.port in {t for _, t in by_name.values()}
    assert b.readiness_address is not None and b.stats_address is not None
    assert container_ports["status-port"] == b.readiness_address.port == 15021
    assert container_ports["http-envoy-prom"] == b.stats_address.port == 15090


def test_gateway_declares_httpbin_as_the_sidecars_config_does() -> None:
    def service_entries(cm: str, key: str) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(config_map(cm)["data"][key]) if d and d["kind"] == "ServiceEntry"]

    assert service_entries("istio-ingressgateway-config", "services.yaml") == service_entries("pysidecar-config", "istio.yaml")
    (httpbin,) = [d for d in docs(MANIFESTS / "20-httpbin.yaml") if d["kind"] == "Service"]
    assert [p["port"] for p in httpbin["spec"]["ports"]] == [8000]


def test_gateway_tls_from_the_credentials_secret(tmp_path: Path, certs: SeedCerts) -> None:
    # deploy/README.md's recipe: an HTTPS server with credentialName, the Secret document in the
    # istio-ingressgateway-credentials Secret (projected into /etc/pysidecar/), the Gateway's namespace.
    gw_text = config_map("istio-ingressgateway-config")["data"]["gateway.yaml"]
    gw_docs = [d for d in yaml.safe_load_all(gw_text) if d]
    (gw,) = [d for d in gw_docs if d["kind"] == "Gateway"]
    gw["spec"]["servers"].append({
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "tls": {"mode": "SIMPLE", "credentialName": "httpbin-credential"},
        "hosts": ["httpbin.example.com"],
    })  # fmt: skip
    # As `kubectl -n pysidecar-demo create secret tls ... --dry-run=client -o yaml` prints it.
    secret = yaml.safe_load(tls_secret("httpbin-credential", certs.httpbin, namespace=NAMESPACE))
    secret["metadata"]["creationTimestamp"] = None
    extra = {"gateway.yaml": yaml.safe_dump_all(gw_docs), "credentials.yaml": yaml.safe_dump(secret)}
    b = compile_gateway_dir(gateway_config_dir(tmp_path, extra))
    assert [x.name for x in b.listeners] == ["0.0.0.0_8080", "0.0.0.0_8443"]
    lis = b.listener("0.0.0.0_8443")
    assert lis is not None
    (chain,) = lis.filter_chains
    assert chain.filter_chain_match.server_names == ("httpbin.example.com",)
    assert chain.transport_socket is not None and chain.transport_socket.alpn_protocols == ("h2", "http/1.1")
    hcm = chain.terminal_filter
    assert isinstance(hcm, HttpConnectionManager)
    (vh,) = hcm.route_config.virtual_hosts
    assert vh.name == "httpbin.example.com:443"
    assert {r.route.cluster for r in vh.routes if r.route} == {HTTPBIN_CLUSTER}


def test_gateway_is_unprivileged_and_not_injected() -> None:
    dep = gateway_object("Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    assert "initContainers" not in spec  # nothing to intercept: the gateway binds its ports
    container = gateway_container()
    security = container["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["runAsNonRoot"]) == (1337, 1337, True)
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["privileged"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}  # Pod Security "restricted"
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"} in container["ports"]
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    annotations = pod["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "15090", "prometheus.io/path": "/stats/prometheus"}
    # Its own ServiceAccount, no token (nothing talks to the API server), no RBAC.
    (sa,) = [d for d in docs(GATEWAY_FILE) if d["kind"] == "ServiceAccount"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"] and spec["automountServiceAccountToken"] is False
    # `pysidecar inject` leaves it alone (sidecar.istio.io/inject: "false").
    assert list(yaml.safe_load_all(inject_text(GATEWAY_FILE.read_text(), Settings()))) == docs(GATEWAY_FILE)


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
    assert instrs[0] == ("FROM", "debian:bookworm-slim AS python")
    assert any(k == "RUN" and "apt-get install" in v and "iptables" in v for k, v in instrs)
    assert any(k == "RUN" and "pip install" in v for k, v in instrs)
    assert json.loads(last(instrs, "ENTRYPOINT")) == ["pysidecar", "init"]
    assert last(instrs, "USER").split(":")[0] in ("0", "root")
    assert f"-t {load_template().init_container['image']} " in path.read_text()


def test_sidecar_containerfile() -> None:
    path = DEPLOY / "Containerfile"
    instrs = instructions(path)
    assert instrs[0] == ("FROM", "debian:bookworm-slim AS python")
    user_setup = " ".join(v for k, v in instrs if k == "RUN")
    assert "--gid 1337" in user_setup and "--uid 1337" in user_setup
    assert last(instrs, "USER") == "1337:1337"
    assert json.loads(last(instrs, "ENTRYPOINT")) == ["pysidecar", "run"]
    assert json.loads(last(instrs, "CMD")) == ["-c", "/etc/pysidecar/"]
    assert f"-t {load_template().sidecar['image']} " in path.read_text()


def test_containerfiles_share_python_and_venv_stages() -> None:
    # The same instructions up to the final stage: the second build reuses the first's layers
    # (Debian's python3, and the venv with the package and its wheels).
    def stages(path: Path) -> list[tuple[str, str]]:
        instrs = instructions(path)
        last_from = max(i for i, (k, _) in enumerate(instrs) if k == "FROM")
        assert instrs[last_from] == ("FROM", "python"), path
        return instrs[:last_from]

    shared = stages(DEPLOY / "Containerfile")
    assert shared == stages(ROOT / "init" / "Containerfile")
    assert ("RUN", "apt-get update  && apt-get install -y --no-install-recommends python3  && rm -rf /var/lib/apt/lists/*") in shared
    assert any(k == "RUN" and "python3 -m venv /opt/pysidecar" in v and "pip install" in v for k, v in shared)
    assert any(k == "COPY" and v.startswith("--from=venv /opt/pysidecar") for k, v in instructions(DEPLOY / "Containerfile"))


def test_build_context_is_only_the_package() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!pysidecar"} <= set(ignore)


def test_template_is_shipped_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "inject/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["pysidecar"]
    assert any(dep.startswith("kubernetes-validate") for dep in pyproject["project"]["optional-dependencies"]["dev"])
