"""`pysidecar inject`: which objects get a sidecar, how the pod is laid out, and that the output
is valid Kubernetes (kubernetes-validate, strict, 1.29 and the newest schema it ships)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pysidecar.cli import main as cli_main
from pysidecar.inject.objects import inject_text
from pysidecar.inject.pod import STATUS, Settings

K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

POD_SPEC: dict[str, Any] = {
    "containers": [{"name": "app", "image": "example/app:1", "ports": [{"containerPort": 8080}]}],
}


def pod_template(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {"app": "app", **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": copy.deepcopy(POD_SPEC)}


def workload(kind: str, annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    t = pod_template(annotations, labels)
    meta = {"name": f"my-{kind.lower()}", "namespace": "default"}
    selector = {"matchLabels": {"app": "app"}}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, **t["metadata"]}, "spec": t["spec"]}
    if kind == "Job":
        t["spec"]["restartPolicy"] = "Never"
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"template": t}}
    if kind == "CronJob":
        t["spec"]["restartPolicy"] = "OnFailure"
        return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
                "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": t}}}}
    spec: dict[str, Any] = {"selector": selector, "template": t}
    if kind == "StatefulSet":
        spec["serviceName"] = "app"
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}


def inject(docs: list[Any], settings: Settings | None = None) -> list[Any]:
    text = yaml.safe_dump_all(docs, sort_keys=False)
    return list(yaml.safe_load_all(inject_text(text, settings or Settings())))


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template (metadata + spec) of any workload."""
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]  # type: ignore[no-any-return]


def names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c["name"] for c in containers or []]


def init_args(obj: dict[str, Any]) -> list[str]:
    (init,) = [c for c in pod_of(obj)["spec"]["initContainers"] if c["name"] == "istio-init"]
    return init["args"]  # type: ignore[no-any-return]


def assert_valid(docs: list[Any]) -> None:
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


KINDS = ["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_workload_kind_gets_init_and_sidecar(kind: str) -> None:
    (out,) = inject([workload(kind)])
    pod = pod_of(out)
    assert names(pod["spec"]["initContainers"]) == ["istio-init"]
    assert names(pod["spec"]["containers"]) == ["app", "istio-proxy"]
    assert init_args(out) == ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                              "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"]  # fmt: skip
    status = json.loads(pod["metadata"]["annotations"][STATUS])
    assert status["initContainers"] == ["istio-init"] and status["containers"] == ["istio-proxy"]
    assert_valid([out])


@pytest.mark.parametrize("kind", KINDS)
def test_inject_twice_equals_inject_once(kind: str) -> None:
    once = inject([workload(kind, {"traffic.sidecar.istio.io/excludeOutboundPorts": "25"})])
    assert inject(once) == once
    assert inject(once, Settings(native_sidecar=True, hold_application=True)) == once


def test_exclude_outbound_ip_ranges_reaches_init_args() -> None:
    (out,) = inject([workload("Deployment", {"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8"})])
    args = init_args(out)
    assert args[args.index("-x") + 1] == "10.0.0.0/8"
    assert_valid([out])


@pytest.mark.parametrize("where", ["annotation", "label", "workload annotation", "workload label"])
@pytest.mark.parametrize("kind", KINDS)
def test_inject_false_leaves_the_object_untouched(kind: str, where: str) -> None:
    if where == "annotation":
        obj = workload(kind, annotations={"sidecar.istio.io/inject": "false"})
    elif where == "label":
        obj = workload(kind, labels={"sidecar.istio.io/inject": "false"})
    else:
        obj = workload(kind)
        key = "annotations" if where == "workload annotation" else "labels"
        obj["metadata"][key] = {"sidecar.istio.io/inject": "false"}
    assert inject([obj]) == [obj]


def test_label_beats_annotation_as_in_istio() -> None:
    obj = workload("Deployment", annotations={"sidecar.istio.io/inject": "false"},
                   labels={"sidecar.istio.io/inject": "true"})  # fmt: skip
    (out,) = inject([obj])
    assert "istio-proxy" in names(pod_of(out)["spec"]["containers"])


def test_host_network_pods_are_not_injected() -> None:
    obj = workload("DaemonSet")
    obj["spec"]["template"]["spec"]["hostNetwork"] = True
    assert inject([obj]) == [obj]


def test_other_objects_and_everything_else_are_preserved() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"},
               "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}  # fmt: skip
    dep = workload("Deployment", {"team": "a", "prometheus.io/scrape": "false"})
    dep["spec"]["replicas"] = 3
    dep["spec"]["template"]["spec"]["initContainers"] = [{"name": "migrate", "image": "example/m:1"}]
    dep["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    out_service, out_dep = inject([service, None, dep])  # the empty document is dropped
    assert out_service == service
    assert out_dep["spec"]["replicas"] == 3
    pod = pod_of(out_dep)
    assert pod["metadata"]["annotations"]["team"] == "a"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "false"  # the pod's own wins
    assert "prometheus.io/port" not in pod["metadata"]["annotations"]
    assert pod["spec"]["containers"][0] == POD_SPEC["containers"][0]
    # istio-init last: the app's own init containers still have an uncaptured network.
    assert names(pod["spec"]["initContainers"]) == ["migrate", "istio-init"]
    assert names(pod["spec"]["volumes"]) == ["data", "pysidecar-config", "pysidecar-tmp", "istio-certs"]
    assert_valid([out_service, out_dep])


def test_workload_certificate_secret_is_mounted_and_the_pod_marked_for_mtls() -> None:
    dep = workload("Deployment")
    dep["spec"]["template"]["spec"]["serviceAccountName"] = "sleep"
    (out,) = inject([dep])
    pod = pod_of(out)
    certs = next(v for v in pod["spec"]["volumes"] if v["name"] == "istio-certs")
    assert certs["secret"] == {"secretName": "istio.sleep", "optional": True}  # Istio's file-mounted name
    mount = next(m for m in pod["spec"]["containers"][-1]["volumeMounts"] if m["name"] == "istio-certs")
    assert mount == {"name": "istio-certs", "mountPath": "/etc/certs", "readOnly": True}
    assert pod["metadata"]["labels"]["security.istio.io/tlsMode"] == "istio"
    (out,) = inject([workload("Pod")], Settings(cert_secret="my-svid"))
    certs = next(v for v in pod_of(out)["spec"]["volumes"] if v["name"] == "istio-certs")
    assert certs["secret"]["secretName"] == "my-svid"
    assert_valid([out])


def test_kind_list_items_are_injected() -> None:
    lst = {"apiVersion": "v1", "kind": "List", "items": [workload("Deployment"), workload("Job")]}
    (out,) = inject([lst])
    assert [names(pod_of(i)["spec"]["containers"]) for i in out["items"]] == [["app", "istio-proxy"]] * 2
    assert inject([out]) == [out]


def test_sidecar_container_shape() -> None:
    (out,) = inject([workload("Deployment")])
    pod = pod_of(out)
    proxy = pod["spec"]["containers"][-1]
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["securityContext"]["runAsGroup"] == 1337
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}
    assert {"containerPort": 15090, "protocol": "TCP", "name": "http-envoy-prom"} in proxy["ports"]
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]
    assert proxy["args"] == ["-c", "/etc/pysidecar/"]
    init = pod["spec"]["initContainers"][0]
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert init["securityContext"]["runAsUser"] == 0 and init["securityContext"]["runAsNonRoot"] is False
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "15090"
    assert annotations["kubectl.kubernetes.io/default-container"] == "app"


def test_images_and_config_map_are_configurable() -> None:
    settings = Settings(init_image="reg/init:2", proxy_image="reg/proxy:2", config_map="mesh-a")
    (out,) = inject([workload("Pod", {"sidecar.istio.io/proxyImage": "reg/proxy:custom"})], settings)
    spec = pod_of(out)["spec"]
    assert spec["initContainers"][0]["image"] == "reg/init:2"
    assert spec["containers"][-1]["image"] == "reg/proxy:custom"  # the pod's annotation wins
    assert spec["volumes"][0]["configMap"]["name"] == "mesh-a"


def test_proxy_resources_annotations_replace_defaults() -> None:
    (out,) = inject([workload("Deployment", {"sidecar.istio.io/proxyCPU": "50m",
                                             "sidecar.istio.io/proxyMemoryLimit": "256Mi"})])  # fmt: skip
    assert pod_of(out)["spec"]["containers"][-1]["resources"] == {
        "requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}}  # fmt: skip
    assert_valid([out])


def test_interception_mode_none_has_no_init_container() -> None:
    (out,) = inject([workload("Deployment", {"sidecar.istio.io/interceptionMode": "NONE"})])
    assert "initContainers" not in pod_of(out)["spec"]
    assert_valid([out])


def test_tproxy_runs_the_proxy_as_root_in_gid_1337() -> None:
    (out,) = inject([workload("Deployment", {"sidecar.istio.io/interceptionMode": "TPROXY"})])
    proxy = pod_of(out)["spec"]["containers"][-1]
    security = proxy["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["capabilities"]["add"]) == (0, 1337, ["NET_ADMIN"])
    # Istio's node metadata tells the proxy, which then makes virtualInbound transparent.
    assert {"name": "ISTIO_META_INTERCEPTION_MODE", "value": "TPROXY"} in proxy["env"]
    assert_valid([out])


# --- holdApplicationUntilProxyStarts and native sidecars -----------------------------------------

HOLD = {"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true\n"}


@pytest.mark.parametrize("source", ["annotation", "mesh default"])
def test_hold_puts_proxy_first_with_post_start_wait(source: str) -> None:
    obj = workload("Deployment", HOLD if source == "annotation" else None)
    (out,) = inject([obj], Settings(hold_application=source == "mesh default"))
    containers = pod_of(out)["spec"]["containers"]
    assert names(containers) == ["istio-proxy", "app"]
    assert containers[0]["lifecycle"] == {"postStart": {"exec": {"command": ["pysidecar", "wait"]}}}
    assert pod_of(out)["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
    assert_valid([out])


def test_annotation_can_turn_the_mesh_default_off() -> None:
    obj = workload("Deployment", {"proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": false}'})
    (out,) = inject([obj], Settings(hold_application=True))
    containers = pod_of(out)["spec"]["containers"]
    assert names(containers) == ["app", "istio-proxy"] and "lifecycle" not in containers[1]


@pytest.mark.parametrize("source", ["flag", "annotation"])
def test_native_sidecar_is_a_restartable_init_container(source: str) -> None:
    annotations = {"sidecar.istio.io/nativeSidecar": "true"} if source == "annotation" else {}
    obj = workload("Deployment", {**annotations, **HOLD})
    obj["spec"]["template"]["spec"]["initContainers"] = [{"name": "migrate", "image": "example/m:1"}]
    (out,) = inject([obj], Settings(native_sidecar=source == "flag"))
    spec = pod_of(out)["spec"]
    assert names(spec["initContainers"]) == ["istio-init", "istio-proxy", "migrate"]
    assert names(spec["containers"]) == ["app"]
    proxy = spec["initContainers"][1]
    assert proxy["restartPolicy"] == "Always" and "lifecycle" not in proxy
    status = json.loads(pod_of(out)["metadata"]["annotations"][STATUS])
    assert status["initContainers"] == ["istio-init", "istio-proxy"] and status["containers"] is None
    assert_valid([out])
    assert inject([out]) == [out]


def test_native_annotation_false_beats_the_flag() -> None:
    (out,) = inject([workload("Pod", {"sidecar.istio.io/nativeSidecar": "false"})], Settings(native_sidecar=True))
    assert names(pod_of(out)["spec"]["containers"]) == ["app", "istio-proxy"]


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("annotations", "needle"), [
    ({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/33"}, "traffic.sidecar.istio.io/excludeOutboundIPRanges"),
    ({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: maybe"}, "proxy.istio.io/config"),
    ({"proxy.istio.io/config": "[1, 2"}, "proxy.istio.io/config"),
    ({"sidecar.istio.io/nativeSidecar": "yes please"}, "sidecar.istio.io/nativeSidecar"),
    ({"sidecar.istio.io/proxyMemory": "lots"}, "sidecar.istio.io/proxyMemory"),
])  # fmt: skip
def test_cli_bad_annotation_exits_2_naming_object_and_annotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], annotations: dict[str, str], needle: str
) -> None:
    src = tmp_path / "app.yaml"
    out = tmp_path / "out.yaml"
    ok = workload("Pod")
    src.write_text(yaml.safe_dump_all([ok, workload("Deployment", annotations)]))
    assert cli_main(["inject", "-f", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Deployment default/my-deployment" in err and str(src) in err
    assert "document 2" in err
    assert not out.exists()  # nothing written half-way


@pytest.mark.parametrize("text", ["a: [1, 2\n", "kind: Pod\n\tspec: {}\n"])
def test_cli_bad_yaml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    src = tmp_path / "bad.yaml"
    src.write_text(text)
    assert cli_main(["inject", "-f", str(src)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_cli_missing_file_and_missing_pod_template_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["inject", "-f", str(tmp_path / "nope.yaml")]) == 2
    src = tmp_path / "broken.yaml"
    src.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1}\n")
    assert cli_main(["inject", "-f", str(src)]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and "Deployment x" in err and "pod template" in err


def test_cli_round_trip_and_meshconfig(tmp_path: Path) -> None:
    src, once, twice = tmp_path / "app.yaml", tmp_path / "once.yaml", tmp_path / "twice.yaml"
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("defaultConfig:\n  holdApplicationUntilProxyStarts: true\n")
    src.write_text(yaml.safe_dump(workload("Deployment")))
    assert cli_main(["inject", "-f", str(src), "-o", str(once), "--meshconfig", str(mesh)]) == 0
    assert cli_main(["inject", "-f", str(once), "-o", str(twice)]) == 0
    assert once.read_text() == twice.read_text()
    assert once.read_text().startswith("---\n")
    (out,) = yaml.safe_load_all(once.read_text())
    assert names(pod_of(out)["spec"]["containers"]) == ["istio-proxy", "app"]


def test_misplaced_traffic_annotation_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = workload("Deployment")
    obj["metadata"]["annotations"] = {"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/8"}
    src = tmp_path / "app.yaml"
    src.write_text(yaml.safe_dump(obj))
    assert cli_main(["inject", "-f", str(src), "-o", str(tmp_path / "o.yaml")]) == 0
    assert "spec.template.metadata.annotations" in capsys.readouterr().err


def test_existing_istio_proxy_container_without_status_is_an_error() -> None:
    obj = workload("Pod")
    obj["spec"]["containers"].append({"name": "istio-proxy", "image": "x"})
    with pytest.raises(ValueError, match="istio-proxy"):
        inject([obj])


@pytest.mark.parametrize(("kind", "native", "warned"), [
    ("Job", False, True), ("CronJob", False, True), ("Job", True, False), ("Deployment", False, False)])  # fmt: skip
def test_jobs_without_native_sidecar_warn(kind: str, native: bool, warned: bool) -> None:
    warnings: list[str] = []
    inject_text(yaml.safe_dump(workload(kind)), Settings(native_sidecar=native), warnings=warnings)
    assert any("never completes" in w for w in warnings) == warned


def test_null_metadata_and_annotations_are_fine() -> None:
    obj = workload("Deployment")
    obj["spec"]["template"]["metadata"] = None
    (out,) = inject([obj])
    assert "istio-proxy" in names(pod_of(out)["spec"]["containers"])
    assert_valid([out])


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=80), max_size=5))
def test_untouched_objects_survive_the_round_trip(data: dict[str, str]) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data}
    assert list(yaml.safe_load_all(inject_text(yaml.safe_dump(cm), Settings()))) == [cm]
