"""deploy/k8s: every overlay builds with `kubectl kustomize`, the core objects validate offline
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail), and the fields a
gRPC service with drains, streams and autoscaling depends on hold together across the objects."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from segserve import settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest release with every field used: native gRPC probes (GA 1.27), preStop sleep (1.30).
KUBE_VERSION = "1.30.0"
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim", "Namespace"}
MODEL_SERVICE = "segmentation.v1.Segmenter"


def _kustomize_skip_reason() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not installed (.ci/run installs it from Debian where it can)"
    run = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True)
    version = json.loads(run.stdout or "{}").get("kustomizeVersion", "") if run.returncode == 0 else ""
    match = re.match(r"v(\d+)", version)
    if not match or int(match.group(1)) < 4:
        return f"kubectl's kustomize is {version or 'too old (v2)'}: these overlays need kustomize v4+"
    return None


_NO_KUSTOMIZE = _kustomize_skip_reason()
needs_kustomize = pytest.mark.skipif(_NO_KUSTOMIZE is not None, reason=str(_NO_KUSTOMIZE))


def build(path: str) -> list[dict]:
    run = subprocess.run(
        ["kubectl", "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def validate_core(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        raise AssertionError(f"{where}: {exc.message} at {list(exc.path)}") from None


def check_pod_spec(spec: dict, container: dict) -> None:
    """What a draining gRPC replica needs from its pod, wherever the pod spec lives."""
    env = env_of(container)
    grace_s = float(env["SEGSERVE_GRACE_S"])
    pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop_s + grace_s  # the drain finishes first
    security = spec["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert 50051 in {p["containerPort"] for p in container["ports"]}
    assert env["SEGSERVE_METRICS_HOST"] == "0.0.0.0"  # /metrics binds loopback by default
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert container["readinessProbe"]["grpc"]["service"] == MODEL_SERVICE
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > grace_s  # a drain is not a death
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    cache_volume = mounts[env["SEGSERVE_TRT_CACHE_DIR"]]
    assert cache_volume in {v["name"] for v in spec["volumes"]}


@pytest.fixture(scope="module", params=["overlays/gpu", "overlays/cpu"])
def overlay(request) -> tuple[str, list[dict]]:
    if _NO_KUSTOMIZE:
        pytest.skip(_NO_KUSTOMIZE)
    return request.param, build(request.param)


def test_core_objects_validate_against_the_kubernetes_schemas(overlay):
    _, objects = overlay
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject"}
    for obj in objects:
        if obj["kind"] in CORE_KINDS:
            validate_core(obj)
        else:
            assert obj["kind"] == "ScaledObject", f"unexpected kind {obj['kind']}"


def test_deployment_drains_within_its_grace_and_probes_over_grpc(overlay):
    name, objects = overlay
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    check_pod_spec(spec, container)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    metrics_port = env_of(container)["SEGSERVE_METRICS_PORT"]
    assert annotations["prometheus.io/port"] == metrics_port
    assert int(metrics_port) in {p["containerPort"] for p in container["ports"]}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    startup = container["startupProbe"]
    startup_budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    limits = container["resources"]["limits"]
    if name.endswith("gpu"):
        assert limits["nvidia.com/gpu"] == 1 and env_of(container)["SEGSERVE_PROVIDERS"] == "auto"
        assert startup_budget_s >= 600  # a TensorRT engine build takes minutes
        cache = next(v for v in spec["volumes"] if v["name"] == "trt-cache")
        claim = cache["persistentVolumeClaim"]["claimName"]
        assert "emptyDir" not in cache and one(objects, "PersistentVolumeClaim")["metadata"]["name"] == claim
    else:
        assert "nvidia.com/gpu" not in limits and env_of(container)["SEGSERVE_PROVIDERS"] == "cpu"
        assert "cpu" not in limits  # CFS throttling costs latency
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"segserve"}


def test_headless_service_and_budget_select_the_pods(overlay):
    _, objects = overlay
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["clusterIP"] == "None"  # DNS gives every pod: clients balance per call
    grpc_port = next(p for p in service["spec"]["ports"] if p["port"] == 50051)
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


def test_scaledobject_scales_the_deployment_on_frames_in_flight(overlay):
    name, objects = overlay
    scaled = one(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == one(objects, "Deployment")["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert 2 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert "segserve_inflight_frames" in meta["query"] and 'namespace="segserve"' in meta["query"]
    assert meta["serverAddress"].startswith("http")
    assert float(meta["threshold"]) == (8 if name.endswith("gpu") else 2)  # strings, as KEDA wants
    assert isinstance(meta["threshold"], str)


@needs_kustomize
def test_kserve_inferenceservice_is_a_raw_deployment_with_an_h2c_port():
    (isvc,) = build("kserve")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert (
        annotations["prometheus.io/port"]
        == env_of(isvc["spec"]["predictor"]["containers"][0])["SEGSERVE_METRICS_PORT"]
    )
    predictor = isvc["spec"]["predictor"]
    assert 2 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"]
    assert container["ports"] == [{"name": "h2c", "containerPort": 50051, "protocol": "TCP"}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    check_pod_spec(predictor, container)
    # The predictor is a pod spec plus KServe's own fields: the pod part must be a valid Pod.
    pod_spec = {k: v for k, v in predictor.items() if k not in {"minReplicas", "maxReplicas"}}
    validate_core({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "segserve"}, "spec": pod_spec})


def test_every_setting_in_the_manifests_is_a_serve_option():
    """SEGSERVE_* variables the pods set are `segserve serve` options (a renamed one would be ignored)."""
    known = {o.env_name for o in settings.SERVE_OPTIONS + settings.MODEL_OPTIONS if o.env_name}
    used = set()
    for path in K8S.rglob("*.yaml"):
        used |= set(re.findall(r"name: (SEGSERVE_[A-Z0-9_]+)", path.read_text()))
    assert used and used <= known, sorted(used - known)


def test_base_files_validate_without_kustomize():
    """The base is plain manifests: valid on their own (kubectl apply -f), with or without kubectl."""
    files = sorted(p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml")
    assert {p.name for p in files} == {"deployment.yaml", "service.yaml", "pdb.yaml"}
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            validate_core(obj)
