"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas (offline, strict), KEDA's
checked by structure, and every name, key, route and command they refer to exists."""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from producer.cli import main as producer_cli
from shared import queues
from shared.config import PROJECT_ROOT, load_settings
from stack.supervisor import WORKER_STOP_SECONDS
from web.app import create_app
from worker import health

MANIFESTS = PROJECT_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = kubernetes_validate.latest_version()  # the newest schemas the package bundles
KEDA_API = "keda.sh/v1alpha1"
APP_UID = 10001
# Fields of KEDA's CRDs (keda.sh/v1alpha1) that these manifests may use; KEDA's schemas are not bundled.
SCALED_OBJECT_FIELDS = {
    "scaleTargetRef",
    "minReplicaCount",
    "maxReplicaCount",
    "pollingInterval",
    "cooldownPeriod",
    "triggers",
}
TRIGGER_FIELDS = {"type", "metadata", "authenticationRef"}
TRIGGER_METADATA = {
    "redis": ({"listName", "listLength"}, {"databaseIndex", "activationListLength"}),
    "prometheus": ({"serverAddress", "query", "threshold"}, set()),
}


def manifest_files() -> list[Path]:
    return sorted(path for path in MANIFESTS.rglob("*.yaml") if path.name != "kustomization.yaml")


def resources() -> list[dict[str, Any]]:
    return [document for path in manifest_files() for document in yaml.safe_load_all(path.read_text()) if document]


def kubernetes_resources() -> list[dict[str, Any]]:
    return [resource for resource in resources() if resource["apiVersion"] != KEDA_API]


def keda_resources() -> list[dict[str, Any]]:
    return [resource for resource in resources() if resource["apiVersion"] == KEDA_API]


def the(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        resource
        for resource in resources()
        if resource["kind"] == kind and name in (None, resource["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


SECRET = the("Secret")
CONFIG = the("ConfigMap")
WEB = the("Deployment", "mnist-queue-web")
WORKERS = the("Deployment", "mnist-queue-worker")
JOB = the("Job")
POD_OWNERS = (WEB, WORKERS, JOB)


def container(owner: dict[str, Any]) -> dict[str, Any]:
    (only,) = owner["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize(
    "resource", kubernetes_resources(), ids=lambda resource: f"{resource['kind']}/{resource['metadata']['name']}"
)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(resource):
    assert kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_the_validation_is_strict():
    broken = json.loads(json.dumps(WEB))
    web = container(broken)
    web["livenesProbe"] = web.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest_but_those_in_subfolders():
    # examples/ holds the Secret's placeholders (the real one is made with kubectl), keda/ needs KEDA.
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    expected = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(expected)


def test_the_secret_example_holds_placeholders_that_production_refuses():
    text = (MANIFESTS / "examples" / "secret.yaml").read_text()
    assert f"kubectl create secret generic {SECRET['metadata']['name']}" in text
    values = SECRET["stringData"]
    assert {"DATABASE_URL", "SCHEMA_DATABASE_URL", "REDIS_URL", "SECRET_KEY"} <= set(values)
    settings = {**values, **CONFIG["data"]}
    # Everything parses; with MNIST_PRODUCTION (as the ConfigMap sets it) the placeholders are refused.
    load_settings({**settings, "MNIST_PRODUCTION": ""})
    with pytest.raises(ValueError, match="SECRET_KEY"):
        load_settings(settings)
    real = {"SECRET_KEY": secrets.token_urlsafe(32), "DATABASE_URL": "postgresql://a:not-in-the-repository@db/a"}
    real["SCHEMA_DATABASE_URL"] = real["DATABASE_URL"]
    load_settings({**settings, **real})
    for name in ("DATABASE_URL", "SCHEMA_DATABASE_URL"):
        with pytest.raises(ValueError, match=f"^{name} uses a development password"):
            load_settings({**settings, **real, name: values[name]})


ROLE_URL_KEYS = {"WEB_DATABASE_URL", "WORKER_DATABASE_URL"}


def test_every_secret_and_config_map_reference_exists():
    references = 0
    for owner in POD_OWNERS:
        for source in container(owner).get("envFrom", []):
            assert source["configMapRef"]["name"] == CONFIG["metadata"]["name"]
        for variable in container(owner).get("env", []):
            reference = variable["valueFrom"]["secretKeyRef"]
            assert reference["name"] == SECRET["metadata"]["name"] and reference["key"] in SECRET["stringData"]
            # DATABASE_URL of the web and the workers: each service's own role's URL
            assert variable["name"] == reference["key"] or reference["key"] in ROLE_URL_KEYS
            references += 1
    assert references == 7  # web and workers: DATABASE_URL, REDIS_URL, SECRET_KEY; the Job: SCHEMA_DATABASE_URL
    assert "SCHEMA_DATABASE_URL" not in {
        variable["name"] for owner in (WEB, WORKERS) for variable in container(owner)["env"]
    }


def test_the_service_selects_the_web_pods_only():
    service = the("Service")
    selector = service["spec"]["selector"]
    for owner in (WEB, WORKERS, JOB):
        labels = owner["spec"]["template"]["metadata"]["labels"]
        assert (selector.items() <= labels.items()) == (owner is WEB)
    for deployment in (WEB, WORKERS):
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {container_port["name"] for container_port in container(WEB)["ports"]}


def test_the_commands_are_those_of_the_images_and_the_code():
    dockerfile_cmd = re.search(r"^CMD (\[.*\])$", (PROJECT_ROOT / "Dockerfile.web").read_text(), re.MULTILINE)
    assert container(WEB)["command"] == json.loads(dockerfile_cmd.group(1))
    assert (
        container(WORKERS)["command"] == ["python", "-m", "worker"]
        and (PROJECT_ROOT / "worker" / "__main__.py").is_file()
    )
    assert container(JOB)["command"] == ["python", "-m", "producer", "init-db"] and "init-db" in producer_cli.commands
    assert container(JOB)["image"] == container(WORKERS)["image"]  # the web image has no producer


def test_the_web_probes_liveness_without_services_and_readiness_on_them():
    web = container(WEB)
    assert (web["livenessProbe"]["httpGet"]["path"], web["readinessProbe"]["httpGet"]["path"]) == (
        "/healthz",
        "/readyz",
    )
    app = create_app({"TESTING": True}, settings=load_settings({}))
    assert {"/healthz", "/readyz"} <= {rule.rule for rule in app.url_map.iter_rules()}
    # The unit layer refuses every connection: /healthz answering shows it needs neither PostgreSQL nor Redis.
    assert app.test_client().get("/healthz").status_code == 200
    bind = web["command"][web["command"].index("--bind") + 1]
    assert bind.endswith(f":{web['ports'][0]['containerPort']}")


def test_the_worker_probes_run_the_health_check(tmp_path, monkeypatch):
    worker = container(WORKERS)
    assert worker["readinessProbe"]["exec"]["command"] == ["python", "-m", "worker.health"]
    liveness = worker["livenessProbe"]["exec"]["command"]
    assert worker["startupProbe"]["exec"]["command"] == liveness and liveness[:3] == ["python", "-m", "worker.health"]
    # The probe's own arguments, on a file the consumer just touched, with no Redis (refused in this layer).
    alive = tmp_path / "alive"
    alive.touch()
    monkeypatch.setenv("ENV_FILE", "")
    monkeypatch.setenv("WORKER_LIVENESS_FILE", str(alive))
    assert health.main(liveness[3:]) == 0
    # The file the ConfigMap names is on a writable volume (the root filesystem is read-only).
    liveness_file = Path(CONFIG["data"]["WORKER_LIVENESS_FILE"])
    assert any(liveness_file.is_relative_to(mount["mountPath"]) for mount in worker["volumeMounts"])


def test_pods_run_as_the_images_user_with_resources_and_a_grace_period_above_a_batch():
    for owner in POD_OWNERS:
        pod = owner["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == APP_UID
        resources_ = container(owner)["resources"]
        assert {"cpu", "memory"} <= resources_["requests"].keys() and {"cpu", "memory"} <= resources_["limits"].keys()
    assert WORKERS["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= WORKER_STOP_SECONDS


# A web process at rest and granian's main process, in MiB (python -m bench --sections upload-memory).
WEB_PROCESS_AT_REST_MIB = 128
WEB_MAIN_PROCESS_MIB = 64


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


def test_the_web_memory_limit_holds_every_process_decoding_its_most_at_once():
    settings = load_settings(CONFIG["data"] | {"MNIST_PRODUCTION": ""})
    per_process = WEB_PROCESS_AT_REST_MIB + settings.concurrent_decodes * settings.max_decode_megabytes
    volumes = sum(
        mebibytes(volume["emptyDir"]["sizeLimit"])
        for volume in WEB["spec"]["template"]["spec"]["volumes"]
        if volume["emptyDir"].get("medium") == "Memory"  # a tmpfs counts against the container's memory
    )
    needed = settings.web_processes * per_process + WEB_MAIN_PROCESS_MIB + volumes
    resources_ = container(WEB)["resources"]
    assert mebibytes(resources_["limits"]["memory"]) >= needed
    at_rest = settings.web_processes * WEB_PROCESS_AT_REST_MIB + WEB_MAIN_PROCESS_MIB
    assert at_rest <= mebibytes(resources_["requests"]["memory"]) <= mebibytes(resources_["limits"]["memory"])


def scaled_objects() -> list[dict[str, Any]]:
    return [resource for resource in keda_resources() if resource["kind"] == "ScaledObject"]


@pytest.mark.parametrize(
    "scaled_object", scaled_objects(), ids=lambda resource: resource["spec"]["triggers"][0]["type"]
)
def test_keda_scales_the_worker_deployment_on_the_bulk_queue(scaled_object):
    spec = scaled_object["spec"]
    assert spec.keys() <= SCALED_OBJECT_FIELDS
    assert spec["scaleTargetRef"] == {"name": WORKERS["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]  # never 0: each worker pod runs an upload consumer
    # The alternatives share one name, so applying one replaces the other (two would fight over the replicas).
    assert scaled_object["metadata"]["name"] == WORKERS["metadata"]["name"]
    (trigger,) = spec["triggers"]
    assert trigger.keys() <= TRIGGER_FIELDS
    required, optional = TRIGGER_METADATA[trigger["type"]]
    assert required <= trigger["metadata"].keys() <= required | optional
    assert all(isinstance(value, str) for value in trigger["metadata"].values())  # KEDA's metadata is a map of strings
    if trigger["type"] == "redis":
        assert trigger["metadata"]["listName"] == f"{CONFIG['data']['QUEUE_PREFIX']}.bulk"
        assert trigger["metadata"]["listName"] == queues.broker.bulk_queue(
            load_settings(CONFIG["data"] | {"MNIST_PRODUCTION": ""})
        )
        redis_url = urllib.parse.urlsplit(SECRET["stringData"]["REDIS_URL"])
        assert trigger["metadata"]["databaseIndex"] == redis_url.path.lstrip("/")
        authentication = the("TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert authentication["apiVersion"] == KEDA_API and authentication["spec"].keys() == {"secretTargetRef"}
        parameters = {}
        for reference in authentication["spec"]["secretTargetRef"]:
            assert reference["name"] == SECRET["metadata"]["name"]
            parameters[reference["parameter"]] = SECRET["stringData"][reference["key"]]
        assert parameters == {"address": redis_url.netloc.rpartition("@")[2], "password": redis_url.password}
    else:
        assert "mnist_queue_depth" in trigger["metadata"]["query"]


def test_only_the_tools_pod_holds_the_app_roles_url():
    """The web and the workers connect as their own roles; the operators' tools (worker image) as the app role."""
    tools = the("Pod", "mnist-queue-tools")["spec"]["containers"][0]
    keys = {variable["name"]: variable["valueFrom"]["secretKeyRef"]["key"] for variable in tools["env"]}
    assert keys["DATABASE_URL"] == "DATABASE_URL" and tools["image"] == container(WORKERS)["image"]
    for owner in (WEB, WORKERS, JOB):
        used = {variable["valueFrom"]["secretKeyRef"]["key"] for variable in container(owner)["env"]}
        assert "DATABASE_URL" not in used
