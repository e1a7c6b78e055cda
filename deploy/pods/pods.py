"""The real-pods run: build the images with podman, inject the sample pods with `pysidecar inject`,
run them and the ingress gateway with `podman kube play`, check them, take them down.

    scripts/pods.sh [all|images|up|check|down]     (all: images, up, check, down; the default)

Promises:
- Nothing is pulled from a container registry unless it answers: `debian:bookworm-slim` is used
  if present, else loaded from the cache (`$PYSIDECAR_PODS_CACHE`, default
  ~/.cache/pysidecar/), else pulled, else made here from Debian packages with mmdebstrap and
  imported under that name (then saved to the cache for the next run).
- The pods live on the internal podman network `psc-pods` (198.19.250.0/24, in the lab's
  benchmarking range): no gateway, no NAT, no DNS server; names come from each pod's /etc/hosts
  (hostAliases). No route off the machine exists from any pod. The host never sends to a pod:
  every request comes from a pod or from the `psc-pods-node` container, which stands in for
  the node (kubelet's probes, Prometheus' scrape, an ingress client outside the gateway pod).
- `down` removes, by name, every pod, container, volume and network `up` creates, whether or
  not `up` finished; it is run before `up` and after `all`, pass or fail. Images stay.
- The names are fixed, so one run at a time per machine: `exclusive()` (an flock on
  /run/lock/pysidecar-pods.lock) waits for another run (the script's, the test's) to finish.
- What `podman kube play` (4.3, Debian bookworm) cannot take from the injected manifests is
  filled in by `for_podman` the way a kubelet would, each change listed there.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import fcntl
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
INIT_IMAGE = "pysidecar/init:0.1.0"
PROXY_IMAGE = "pysidecar/proxy:0.1.0"
APP_IMAGE = "pysidecar/lab-app:0.1.0"
NETWORK = "psc-pods"
SUBNET = "198.19.250.0/24"
NODE = "psc-pods-node"
NODE_IP = "198.19.250.2"
NAMESPACE = "pysidecar-demo"
# The volumes kube play makes from the manifests' configMap/emptyDir volumes, by name.
# The volumes kube play makes from the manifests' configMap and emptyDir volumes (emptyDirs are
# renamed per workload by `for_podman`), removed by name.
VOLUMES = (
    "pysidecar-config", "httpbin-pysidecar-tmp", "sleep-pysidecar-tmp", "istio-ingressgateway-tmp",
    "httpbin-istio-certs", "sleep-istio-certs", "istio-ingressgateway-config-projected",
)  # fmt: skip
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Pod:
    """One `podman kube play`: the app file (before injection) and the address it gets."""

    name: str  # the pod podman makes from a Deployment: <deployment>-pod-0
    source: Path
    ip: str
    inject: bool


HTTPBIN = Pod("httpbin-pod-0", DEPLOY / "pods" / "httpbin.yaml", "198.19.250.10", True)
SLEEP = Pod("sleep-pod-0", DEPLOY / "pods" / "sleep.yaml", "198.19.250.11", True)
GATEWAY = Pod(
    "istio-ingressgateway-pod-0", DEPLOY / "manifests" / "40-ingressgateway.yaml", "198.19.250.12", False
)
PODS = (HTTPBIN, SLEEP, GATEWAY)
HTTPBIN_NAMES = ("httpbin", f"httpbin.{NAMESPACE}.svc.cluster.local")


class PodsError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"pods: {msg}", file=sys.stderr, flush=True)


LOCK = Path("/run/lock/pysidecar-pods.lock")


@contextlib.contextmanager
def exclusive() -> Iterator[None]:
    """Held for a whole run: the pods' names and addresses are fixed."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --- podman ------------------------------------------------------------------------------------


def _limit(kind: int, cap: int) -> int:
    hard = resource.getrlimit(kind)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def containers_conf(state: Path) -> Path:
    """The engine settings every podman call here uses (kube play has no flags for them): runc
    (crun refuses a hybrid cgroup layout) and ulimits within this process' hard limits (podman's
    default nofile of 1048576 is refused where the hard limit is lower)."""
    path = state / "containers.conf"
    nofile = _limit(resource.RLIMIT_NOFILE, 65536)
    nproc = _limit(resource.RLIMIT_NPROC, 8192)
    path.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    return path


class Podman:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(state))}

    def run(self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None) -> str:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input, check=False)
        if check and proc.returncode != 0:
            raise PodsError(f"podman {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def ok(self, *args: str) -> bool:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True,
                              check=False).returncode == 0

    def stream(self, *args: str) -> None:
        """A long step (a build) whose output the user sees."""
        proc = subprocess.run(["podman", *args], env=self.env, stdout=sys.stderr, check=False)
        if proc.returncode != 0:
            raise PodsError(f"podman {' '.join(args[:3])} ...: exit {proc.returncode}")

    def exec(self, container: str, *argv: str, timeout: float = 30) -> str:
        return self.run("exec", container, *argv, timeout=timeout)


# --- images ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pysidecar"
    return Path(os.environ.get("PYSIDECAR_PODS_CACHE", default))


def make_debian_base(podman: Podman, tar: Path) -> None:
    """debian:bookworm-slim from Debian packages: minbase, merged /usr, and what the official slim
    image leaves out (man pages, docs but copyrights, locales, info) and its apt settings (no
    package cache kept, no translations), so the Containerfiles behave as on the pulled image."""
    apt_clean = (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    hooks = [
        f"printf '%s' '{apt_clean}' > \"$1/etc/apt/apt.conf.d/docker-clean\"",
        "echo 'Acquire::Languages \"none\";' > \"$1/etc/apt/apt.conf.d/docker-no-languages\"",
        "echo 'Acquire::GzipIndexes \"true\";' > \"$1/etc/apt/apt.conf.d/docker-gzip-indexes\"",
        "echo 'Apt::AutoRemove::SuggestsImportant \"false\";' > \"$1/etc/apt/apt.conf.d/docker-autoremove-suggests\"",
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log',
    ]
    argv = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--aptopt=Apt::Install-Recommends \"false\"",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
        *[f"--customize-hook={h}" for h in hooks],
        "bookworm", str(tar), *DEBIAN_MIRRORS,
    ]  # fmt: skip
    if shutil.which("mmdebstrap") is None:
        raise PodsError("no debian:bookworm-slim and no mmdebstrap to make it (scripts/bootstrap.sh installs it)")
    log("making debian:bookworm-slim with mmdebstrap (about 2 minutes)")
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise PodsError(f"mmdebstrap failed: {proc.stderr.strip()[-2000:]}")
    podman.run("import", "--change", 'CMD ["bash"]',
               "--change", "LABEL org.opencontainers.image.description=debian:bookworm-slim made by mmdebstrap",
               str(tar), BASE_IMAGE)


def ensure_base(podman: Podman) -> str:
    """Where debian:bookworm-slim came from: present, cache, pulled or made."""
    if podman.ok("image", "exists", BASE_IMAGE):
        return "present"
    tar = cache_dir() / "debian-bookworm-slim.tar"
    if tar.is_file() and podman.ok("load", "-i", str(tar)) and podman.ok("image", "exists", BASE_IMAGE):
        return f"loaded from {tar}"
    if podman.ok("pull", "-q", BASE_IMAGE):
        return "pulled"
    log(f"{BASE_IMAGE} cannot be pulled here")
    tar.parent.mkdir(parents=True, exist_ok=True)
    raw = podman.state / "rootfs.tar"
    make_debian_base(podman, raw)
    raw.unlink()
    podman.run("save", "-o", str(tar), BASE_IMAGE)
    return f"made by mmdebstrap, cached in {tar}"


def build_images(podman: Podman) -> dict[str, int]:
    """Builds the init, proxy and lab-app images; returns their sizes in bytes."""
    secret = ["--secret", f"id=ca-certificates,src={CA_BUNDLE}"] if CA_BUNDLE.is_file() else []
    builds = (
        (INIT_IMAGE, ["-f", str(ROOT / "init" / "Containerfile"), str(ROOT)]),
        (PROXY_IMAGE, ["-f", str(DEPLOY / "Containerfile"), str(ROOT)]),
        (APP_IMAGE, ["-f", str(DEPLOY / "pods" / "Containerfile"), str(DEPLOY / "pods")]),
    )
    sizes = {}
    for tag, args in builds:
        log(f"building {tag}")
        started = time.monotonic()
        podman.stream("build", "--pull=never", *secret, "-t", tag, *args)
        sizes[tag] = int(podman.run("image", "inspect", "--format", "{{.Size}}", tag).strip())
        log(f"built {tag} in {time.monotonic() - started:.0f} s: {sizes[tag] / 1e6:.0f} MB")
    return sizes


# --- manifests for podman ----------------------------------------------------------------------


def _templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates (metadata + spec) of a Pod or a workload."""
    if doc.get("kind") == "Pod":
        return [doc]
    template = doc.get("spec", {}).get("template")
    return [template] if isinstance(template, dict) else []


def for_podman(docs: list[dict[str, Any]], ip: str) -> list[dict[str, Any]]:
    """What `podman kube play` 4.3 cannot take, filled in the way a kubelet would:
    - env `fieldRef` `metadata.namespace` and `status.podIP` (refused: "fieldPath ... not
      supported") become literal values: the object's namespace and the pod's address;
    - `restartPolicy: OnFailure`: podman 4.3 gives init containers the pod's restart policy, so
      under `Always` it restarts the finished istio-init forever (a kubelet never restarts a
      finished init container); the long-running containers never exit here anyway;
    - container `ports` are dropped: podman 4.3 publishes every containerPort on the host's
      same port (a kubelet publishes only a hostPort), which would open the pods to the host's
      network and collide between pods (both sidecars declare 15090);
    - a `secret` volume: podman 4.3 looks for a podman secret of that name and fails without
      one, `optional` or not; an absent optional Secret becomes the empty directory kubelet
      mounts (`emptyDir`), a Secret in `docs` a ConfigMap of its decoded keys (as below);
    - an `emptyDir` volume, which podman makes as a named volume shared by every pod using the
      name (a kubelet gives each pod its own), is named `<workload>-<volume>`;
    - a `projected` volume (refused: only HostPath, ConfigMap, EmptyDir, PVC) becomes a
      ConfigMap volume of one ConfigMap holding what the projection holds: the ConfigMap's keys
      and the keys of each Secret source present in `docs` (absent optional ones are skipped,
      as kubelet does).
    Everything else passes unchanged; what podman ignores (readiness and startup probes,
    postStart hooks, Services) is listed in deploy/README.md."""
    out = copy.deepcopy(docs)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in out if "metadata" in d}
    extra: list[dict[str, Any]] = []
    for doc in out:
        namespace = str(doc.get("metadata", {}).get("namespace", "default"))
        for template in _templates(doc):
            spec = template["spec"]
            spec["restartPolicy"] = "OnFailure"
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                container.pop("ports", None)
                for env in container.get("env", []):
                    path = env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                    value = {"metadata.namespace": namespace, "status.podIP": ip}.get(path)
                    if value is not None:
                        del env["valueFrom"]
                        env["value"] = value
            owner = doc["metadata"]["name"]
            for volume in spec.get("volumes", []):
                if "secret" in volume:
                    _secret_volume(volume, owner, by_name, namespace, extra)
            renamed = {v["name"]: f"{owner}-{v['name']}" for v in spec.get("volumes", []) if "emptyDir" in v}
            for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
                for mount in container.get("volumeMounts", []):
                    mount["name"] = renamed.get(mount["name"], mount["name"])
            for volume in spec.get("volumes", []):
                volume["name"] = renamed.get(volume["name"], volume["name"])
                if "projected" in volume:
                    cm_name = f"{doc['metadata']['name']}-{volume['name']}-projected"
                    cm = _flatten_projection(cm_name, volume.pop("projected"), by_name, namespace)
                    extra.append(cm)
                    volume["configMap"] = {"name": cm["metadata"]["name"]}
    return extra + out


def _secret_volume(
    volume: dict[str, Any], owner: str, by_name: dict[tuple[str, str], dict[str, Any]], namespace: str,
    extra: list[dict[str, Any]],
) -> None:
    source = volume.pop("secret")
    name = str(source.get("secretName", ""))
    if ("Secret", name) in by_name:
        cm = _flatten_projection(f"{owner}-{volume['name']}-secret", {"sources": [{"secret": {"name": name}}]},
                                 by_name, namespace)  # fmt: skip
        extra.append(cm)
        volume["configMap"] = {"name": cm["metadata"]["name"]}
    elif source.get("optional"):
        volume["emptyDir"] = {}  # what kubelet mounts for an absent optional Secret
    else:
        raise PodsError(f"{owner}: volume {volume['name']}: Secret {name!r} is not in the manifests")


def _flatten_projection(
    name: str, projected: dict[str, Any], by_name: dict[tuple[str, str], dict[str, Any]], namespace: str
) -> dict[str, Any]:
    data: dict[str, str] = {}
    for source in projected.get("sources", []):
        kind, ref = ("ConfigMap", source["configMap"]) if "configMap" in source else ("Secret", source.get("secret"))
        if ref is None:
            raise PodsError(f"projected volume {name}: only configMap and secret sources are supported")
        doc = by_name.get((kind, ref["name"]))
        if doc is None:
            if ref.get("optional"):
                continue
            raise PodsError(f"projected volume {name}: {kind} {ref['name']} is not in the manifests")
        if kind == "ConfigMap":
            data.update(doc.get("data", {}))
        else:
            data.update({k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()})
            data.update(doc.get("stringData", {}))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": data}  # fmt: skip


def gateway_docs(certs: Path) -> list[dict[str, Any]]:
    """40-ingressgateway.yaml with deploy/README.md's TLS recipe for seed 001: the Gateway gets
    the HTTPS server (443, SIMPLE, credentialName httpbin-credential) and the optional Secret
    istio-ingressgateway-credentials holds the credential as a Secret document (the seed's
    openssl certificates, made now)."""
    from pysidecar.lab.certs import issue, make_ca, tls_secret

    ca = make_ca(certs)
    pair = issue(certs, ca, "httpbin.example.com", "httpbin organization", 0)
    ca.crt.chmod(0o644)
    docs = [d for d in yaml.safe_load_all(GATEWAY.source.read_text()) if d]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    gw_docs = [d for d in yaml.safe_load_all(cm["data"]["gateway.yaml"]) if d]
    (gw,) = [d for d in gw_docs if d["kind"] == "Gateway"]
    gw["spec"]["servers"].append({
        "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
        "tls": {"mode": "SIMPLE", "credentialName": "httpbin-credential"},
        "hosts": ["httpbin.example.com"],
    })  # fmt: skip
    cm["data"]["gateway.yaml"] = yaml.safe_dump_all(gw_docs, sort_keys=False)
    credential = tls_secret("httpbin-credential", pair, namespace=NAMESPACE)
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "istio-ingressgateway-credentials", "namespace": NAMESPACE},
        "data": {"credentials.yaml": base64.b64encode(credential.encode()).decode()},
    }  # fmt: skip
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    dep["spec"]["template"]["spec"]["hostAliases"] = [{"ip": HTTPBIN.ip, "hostnames": list(HTTPBIN_NAMES)}]
    return [secret, *docs]


# --- up / down ---------------------------------------------------------------------------------


def inject(path: Path, out: Path) -> None:
    """`pysidecar inject` as a user runs it, with the shipped mesh config."""
    argv = [sys.executable, "-m", "pysidecar", "inject", "-f", str(path),
            "--meshconfig", str(DEPLOY / "manifests" / "10-config.yaml"), "-o", str(out)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PodsError(f"pysidecar inject -f {path}: {proc.stderr.strip()}")


def play_file(pod: Pod, state: Path) -> Path:
    return state / f"{pod.name}.yaml"


def up(podman: Podman) -> None:
    """The network, the node container and the three pods, each ready (or an error)."""
    state = podman.state
    podman.run("network", "create", "--internal", "--disable-dns", "--subnet", SUBNET, NETWORK)
    certs = state / "certs"
    shutil.rmtree(certs, ignore_errors=True)
    certs.mkdir()
    docs_for = {}
    for pod in (HTTPBIN, SLEEP):
        injected = state / f"{pod.name}.injected.yaml"
        inject(pod.source, injected)
        docs_for[pod] = [d for d in yaml.safe_load_all(injected.read_text()) if d]
    docs_for[GATEWAY] = gateway_docs(certs)
    certs.chmod(0o755)
    podman.run("run", "-d", "--name", NODE, "--network", NETWORK, "--ip", NODE_IP,
               "--add-host", f"httpbin.example.com:{GATEWAY.ip}",
               "-v", f"{certs / 'example.com.crt'}:/certs/example.com.crt:ro", APP_IMAGE)  # fmt: skip
    for pod in PODS:
        path = play_file(pod, state)
        path.write_text(yaml.safe_dump_all(for_podman(docs_for[pod], pod.ip), sort_keys=False))
        log(f"podman kube play {pod.name} at {pod.ip}")
        extra = ["--configmap", str(DEPLOY / "manifests" / "10-config.yaml")] if pod.inject else []
        podman.run("kube", "play", "--network", NETWORK, "--ip", pod.ip, *extra, str(path), timeout=180)
    for pod in PODS:
        wait_ready(podman, pod)


def down(podman: Podman) -> list[str]:
    """Removes everything `up` makes, by name; returns what could not be removed."""
    for pod in PODS:
        path = play_file(pod, podman.state)
        if path.is_file():
            podman.run("kube", "down", str(path), check=False, timeout=120)
        if podman.ok("pod", "exists", pod.name):
            podman.run("pod", "rm", "-f", "-t", "0", pod.name, check=False, timeout=120)
    podman.run("rm", "-f", "-t", "0", NODE, check=False)
    for volume in VOLUMES:
        podman.run("volume", "rm", "-f", volume, check=False)
    podman.run("network", "rm", "-f", NETWORK, check=False)
    return leftovers(podman)


def leftovers(podman: Podman) -> list[str]:
    left = [f"pod {p.name}" for p in PODS if podman.ok("pod", "exists", p.name)]
    names = podman.run("ps", "-a", "--format", "{{.Names}}").split()
    left += [f"container {n}" for n in names if n == NODE or any(n.startswith(p.name) for p in PODS)]
    left += [f"volume {v}" for v in VOLUMES if podman.ok("volume", "exists", v)]
    left += [f"network {NETWORK}"] if podman.ok("network", "exists", NETWORK) else []
    return left


# --- what the checks look at -------------------------------------------------------------------


def from_node(podman: Podman, *curl_args: str, timeout: float = 20) -> str:
    """curl in the node container: outside every pod, on the pods' network."""
    return podman.exec(NODE, "curl", "-sS", "--max-time", "10", *curl_args, timeout=timeout)


def readiness(podman: Podman, pod: Pod) -> int:
    out = podman.run("exec", NODE, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                     f"http://{pod.ip}:15021/healthz/ready", check=False, timeout=10)  # fmt: skip
    return int(out.strip() or 0)


def wait_ready(podman: Podman, pod: Pod, timeout: float = 90) -> None:
    """kubelet's readiness probe, from the node: :15021/healthz/ready until 200."""
    deadline = time.monotonic() + timeout
    while (code := readiness(podman, pod)) != 200:
        if time.monotonic() > deadline:
            logs = podman.run("logs", f"{pod.name}-istio-proxy", check=False)
            raise PodsError(f"{pod.name}: /healthz/ready still {code} after {timeout:.0f} s\n{logs[-3000:]}")
        time.sleep(1)
    log(f"{pod.name}: /healthz/ready 200")


def scrape(podman: Podman, pod: Pod) -> dict[str, float]:
    """Prometheus' scrape of :15090/stats/prometheus from the node: {series: value}."""
    text = from_node(podman, f"http://{pod.ip}:15090/stats/prometheus")
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def upstream_rq_200(stats: dict[str, float], cluster_prefix: str) -> float:
    """Requests answered 200 on the clusters whose name starts with `cluster_prefix`
    (`outbound|8000||httpbin` matches the label `outbound|8000||httpbin.<ns>.svc.cluster.local`)."""
    return sum(v for s, v in stats.items()
               if s.split("{")[0] == "envoy_cluster_upstream_rq" and 'response_code="200"' in s
               and f'cluster_name="{cluster_prefix}' in s)  # fmt: skip


def client_curl(podman: Podman, url: str) -> tuple[str, dict[str, Any]]:
    """The sleep app's curl (uid 1000, captured by its sidecar): (response head, JSON body)."""
    out = podman.exec(f"{SLEEP.name}-sleep", "curl", "-sS", "-i", "--max-time", "10", url)
    head, _, body = out.partition("\n\n")  # text mode: CRLFs are newlines
    return head, json.loads(body)


def init_exit_codes(podman: Podman, pod: Pod, since: str) -> list[int]:
    """Exit codes of the pod's istio-init runs (podman removes a finished init container; its
    `died` events keep the code)."""
    out = podman.run("events", "--stream=false", "--since", since, "--filter", "event=died",
                     "--filter", f"container={pod.name}-istio-init", "--format", "{{.ContainerExitCode}}")  # fmt: skip
    return [int(x) for x in out.split()]


def pod_iptables(podman: Podman, pod: Pod) -> dict[str, str]:
    """The nat table of the pod's network namespace, per backend ({"nft": ..., "legacy": ...}),
    read from the host inside that namespace (through the infra container's pid)."""
    infra = podman.run("pod", "inspect", "--format", "{{.InfraContainerID}}", pod.name).strip()
    pid = podman.run("inspect", "--format", "{{.State.Pid}}", infra).strip()
    out = {}
    for backend in ("nft", "legacy"):
        proc = subprocess.run(["nsenter", "-t", pid, "-n", f"iptables-{backend}-save", "-t", "nat"],
                              capture_output=True, text=True, check=False, timeout=30)
        out[backend] = proc.stdout
    return out


def uids(podman: Podman, container: str) -> set[int]:
    """The effective uids of the container's processes, read from the host's /proc."""
    pids = podman.run("top", container, "hpid").split()[1:]
    out = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                out.add(int(line.split()[2]))
    return out


def proxy_users(podman: Podman, pod: Pod) -> set[int]:
    return uids(podman, f"{pod.name}-istio-proxy")


def gateway_curl(podman: Podman, *args: str) -> str:
    """A client outside the gateway pod (the node container): the response head."""
    return from_node(podman, "-o", "/dev/null", "-D", "-", *args)


# --- the checks scripts/pods.sh runs (tests/e2e/test_pods.py asserts the same facts itself) -----


def check(podman: Podman, since: str) -> None:
    """Each fact printed as it holds; the first that does not raises PodsError."""

    def ok(fact: str, holds: bool, detail: object = "") -> None:
        if not holds:
            raise PodsError(f"FAILED: {fact}\n{detail}")
        print(f"ok: {fact}", flush=True)

    for pod in (HTTPBIN, SLEEP):
        codes = init_exit_codes(podman, pod, since)
        ok(f"{pod.name}: istio-init exited 0 (runs: {codes})", codes == [0])
        nat = pod_iptables(podman, pod)
        ok(f"{pod.name}: the init's rules are in the pod's netns (nft: ISTIO_OUTPUT -> 15001, "
           "ISTIO_IN_REDIRECT -> 15006, uid 1337 exempt)",
           all(r in nat["nft"] for r in ("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                                         "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                                         "-m owner --uid-owner 1337 -j RETURN")), nat)  # fmt: skip
        users = proxy_users(podman, pod)
        ok(f"{pod.name}: istio-proxy runs as uid 1337 (its processes: {sorted(users)})", users == {1337})
        ok(f"{pod.name}: /healthz/ready answers 200 from the node", readiness(podman, pod) == 200)
    before = {pod: scrape(podman, pod) for pod in (HTTPBIN, SLEEP)}
    head, body = client_curl(podman, "http://httpbin:8000/headers")
    ok("sleep's curl http://httpbin:8000/headers: 200 from the app (x-served-by: httpbin)",
       head.startswith("HTTP/1.1 200") and "x-served-by: httpbin" in head.lower(), head)
    ok("sleep's sidecar routed it (the app saw its x-request-id and x-envoy-attempt-count; the client got "
       "x-envoy-upstream-service-time)",
       {"X-Request-Id", "X-Envoy-Attempt-Count"} <= set(body["headers"])
       and "x-envoy-upstream-service-time" in head.lower(), (head, body))
    head, body = client_curl(podman, "http://httpbin:8000/ip")
    ok(f"httpbin's sidecar passed it to the app (the app's peer is {body.get('origin')}, the inbound "
       f"passthrough's 127.0.0.6; the app's address {body.get('local')})",
       body.get("origin") == "127.0.0.6" and body.get("local") == [HTTPBIN.ip, 8000], body)
    after = {pod: scrape(podman, pod) for pod in (HTTPBIN, SLEEP)}
    sent = upstream_rq_200(after[SLEEP], "outbound|8000||httpbin") - upstream_rq_200(before[SLEEP], "outbound|8000||httpbin")
    ok(f"sleep's :15090 scrape counts both on outbound|8000||httpbin... 200 (+{sent:.0f})", sent == 2)
    got = upstream_rq_200(after[HTTPBIN], "InboundPassthroughCluster") - upstream_rq_200(before[HTTPBIN], "InboundPassthroughCluster")
    ok(f"httpbin's :15090 scrape counts both on InboundPassthroughCluster... 200 (+{got:.0f})", got == 2)
    users = proxy_users(podman, GATEWAY)
    ok(f"gateway runs as uid 1337 (its processes: {sorted(users)})", users == {1337})
    head = gateway_curl(podman, "-H", "Host: httpbin.example.com", f"http://{GATEWAY.ip}:8080/status/200")
    ok("gateway: Host httpbin.example.com /status/200 -> 200 (through httpbin's sidecar)",
       head.startswith("HTTP/1.1 200") and "x-served-by: httpbin" in head.lower(), head)
    head = gateway_curl(podman, "-H", "Host: httpbin.example.com", f"http://{GATEWAY.ip}:8080/headers")
    ok("gateway: /headers has no route -> 404", head.startswith("HTTP/1.1 404"), head)
    head = gateway_curl(podman, "-H", "Host: other.example.com", f"http://{GATEWAY.ip}:8080/status/200")
    ok("gateway: another host -> 404", head.startswith("HTTP/1.1 404"), head)
    head = gateway_curl(podman, "--cacert", "/certs/example.com.crt", "--resolve",
                        f"httpbin.example.com:8443:{GATEWAY.ip}", "https://httpbin.example.com:8443/status/418")
    ok("gateway: SIMPLE TLS https://httpbin.example.com:8443/status/418 -> 418, certificate verified",
       head.startswith(("HTTP/1.1 418", "HTTP/2 418")), head)


def sizes_table(sizes: dict[str, int]) -> str:
    return "\n".join(f"  {tag:28} {size / 1e6:6.0f} MB" for tag, size in sizes.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/pods.sh", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", default="all", choices=["all", "images", "up", "check", "down"])
    parser.add_argument("--state", type=Path, default=Path(tempfile.gettempdir()) / "pysidecar-pods",
                        help="where the generated manifests and certificates go")  # fmt: skip
    args = parser.parse_args(argv)
    args.state.mkdir(parents=True, exist_ok=True)
    with exclusive():
        return _run(args.action, Podman(args.state))


def _run(action: str, podman: Podman) -> int:
    started = time.monotonic()
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
    status = 0
    try:
        if action in ("all", "images"):
            log(f"debian:bookworm-slim: {ensure_base(podman)}")
            print("image sizes:\n" + sizes_table(build_images(podman)), flush=True)
        if action in ("all", "up"):
            down(podman)
            (podman.state / "since").write_text(since)
            up(podman)
        if action in ("all", "check"):
            check(podman, (podman.state / "since").read_text().strip())
    except (PodsError, subprocess.SubprocessError, ValueError, KeyError) as e:
        print(f"pods: {e}", file=sys.stderr)
        status = 1
    finally:
        if action in ("all", "down"):
            left = down(podman)
            if left:
                print(f"pods: left behind: {', '.join(left)}", file=sys.stderr)
                status = 1
    log(f"{action} {'done' if status == 0 else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
