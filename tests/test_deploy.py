"""deploy/kubernetes/: every manifest valid against Kubernetes' API schemas (kubernetes-validate,
which ships them: no network), and consistent with the service it deploys."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.app import create_app
from service.config import ServiceConfig, command_line
from service.engine import InferenceEngine

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes release still maintained when these were written, and the newest the
# installed kubernetes-validate knows.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def manifest_files() -> list[Path]:
    return sorted(MANIFESTS.rglob("*.yaml"))


def resources() -> dict[tuple[str, str], dict]:
    """{(kind, name): resource} of every manifest."""
    found = {}
    for path in manifest_files():
        for resource in yaml.safe_load_all(path.read_text()):
            found[(resource["kind"], resource["metadata"]["name"])] = resource
    return found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_is_valid_against_the_kubernetes_schema(path, version):
    for resource in yaml.safe_load_all(path.read_text()):
        # strict: a misspelt or misplaced field is an error, not silently dropped
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_validator_refuses_a_broken_manifest():
    deployment = resources()[("Deployment", "bncvae-service")]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two' is not of type 'integer'"):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_set_is_complete():
    assert set(resources()) == {
        ("Deployment", "bncvae-service"),
        ("Deployment", "bncvae-service-gpu"),
        ("Service", "bncvae-service"),
        ("HorizontalPodAutoscaler", "bncvae-service"),
        ("HorizontalPodAutoscaler", "bncvae-service-gpu"),
        ("PodDisruptionBudget", "bncvae-service"),
    }


def app_paths() -> set[str]:
    engine = InferenceEngine(lambda: None, ServiceConfig())  # never started: routes only
    return set(create_app(engine).openapi()["paths"])


@pytest.mark.parametrize("name", ["bncvae-service", "bncvae-service-gpu"])
def test_deployment_probes_resources_and_drain(name):
    found = resources()
    deployment = found[("Deployment", name)]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    paths = app_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health" in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" in paths
    assert container["ports"][0]["containerPort"] == 8000  # the Dockerfile's EXPOSE
    resources_ = container["resources"]
    assert resources_["requests"]["cpu"] and resources_["limits"]["memory"]
    # the command is the service's, with options it accepts
    args = container["args"]
    assert args[:3] == ["python3", "-m", "service"]
    options = command_line(args[3:], {}).values
    assert options["port"] == 8000
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["BNCVAE_TORCH_THREADS"]) == int(resources_["limits"]["cpu"])
    # Drain: the preStop wait, then SIGTERM's drain (at most timeout_s), inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + float(env["BNCVAE_TIMEOUT_S"])
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    # selected by the Service and the budget
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = found[(kind, "bncvae-service")]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    assert found[("Service", "bncvae-service")]["spec"]["ports"][0]["targetPort"] == "http"
    # scaled by its autoscaler
    hpa = found[("HorizontalPodAutoscaler", name)]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def test_the_gpu_variant_asks_for_one_gpu_and_serves_on_it():
    gpu = resources()[("Deployment", "bncvae-service-gpu")]["spec"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert command_line(container["args"][3:], {}).values["device"] == "cuda"
    cpu = resources()[("Deployment", "bncvae-service")]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert command_line(cpu["containers"][0]["args"][3:], {}).values["device"] == "cpu"
