"""k8s/: every overlay renders with kustomize and every manifest validates against the Kubernetes schemas
(kubernetes-validate, strict); the parts the service relies on are present in the rendered output."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = ["k8s/overlays/dev", "k8s/overlays/prod", "k8s/models-pull"]
# The oldest Kubernetes minor we support and the newest the schemas know.
K8S_VERSIONS = ["1.31.0", "1.37.0"]
# KEDA's custom resources have no schema in kubernetes-validate and KEDA's published CRD schema cannot be fetched
# offline, so they are skipped by kind here and checked field by field in test_keda_scales_each_queue_*.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}

Manifest = dict[str, Any]


def _kustomize() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


pytestmark = pytest.mark.skipif(_kustomize() is None, reason="neither kubectl nor kustomize is installed")


def _render(path: str) -> list[Manifest]:
    command = _kustomize()
    assert command is not None
    result = subprocess.run([*command, str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{path} does not render:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {path: _render(path) for path in KUSTOMIZATIONS}


def _one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _named(docs: list[Manifest], kind: str, prefix: str) -> Manifest:
    """A generated object (ConfigMap/Secret) whose name kustomize suffixed with a content hash."""
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(rf"{prefix}(-[a-z0-9]+)?", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} named {prefix}-<hash>"
    return found[0]


def _workers(docs: list[Manifest]) -> list[Manifest]:
    return [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "gpu-worker"
    ]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(
    rendered: dict[str, list[Manifest]], path: str
) -> None:
    import kubernetes_validate

    docs = rendered[path]
    assert docs
    problems = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except Exception as exc:  # ValidationError, InvalidSchemaError, VersionNotSupportedError
                problems.append(f"{doc['kind']}/{doc['metadata']['name']} @ {version}: {exc}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_images_are_pinned(rendered: dict[str, list[Manifest]], path: str) -> None:
    for doc in rendered[path]:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


@pytest.mark.parametrize("path", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_api_has_service_hpa_pdb_and_probes(rendered: dict[str, list[Manifest]], path: str) -> None:
    docs = rendered[path]
    api = _one(docs, "Deployment", "tessera-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["image"].rsplit(":", 1)[0].endswith("tessera-api")
    service = _one(docs, "Service", "tessera-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    hpa = _one(docs, "HorizontalPodAutoscaler", "tessera-api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tessera-api"}
    pdb = _one(docs, "PodDisruptionBudget", "tessera-api")
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    if path.endswith("prod"):
        assert pdb["spec"]["minAvailable"] == 1 and hpa["spec"]["minReplicas"] >= 2


def test_prod_gpu_workers_one_per_queue(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["k8s/overlays/prod"]
    config = _named(docs, "ConfigMap", "tessera-config")["data"]
    workers = {w["metadata"]["name"]: w for w in _workers(docs)}
    assert set(workers) == {"tessera-worker-train", "tessera-worker-generate"}
    for queue, limit_key in (("train", "TRAIN"), ("generate", "GENERATE")):
        pod = workers[f"tessera-worker-{queue}"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == ["--queues", queue]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        # Warm shutdown lets the running job finish: the grace period covers the queue's time limit + shutdown.
        limit = int(config[f"TESSERA_WORKER__{limit_key}_TIME_LIMIT_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] >= limit + 30
        # Liveness on the metrics port, which answers from a thread while a job holds the solo pool.
        probe = container["livenessProbe"]["httpGet"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
        assert probe["path"] == "/metrics" and port == int(config["TESSERA_WORKER__METRICS_PORT"]) == 9100
        # Weights: the models PVC, read-only.
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == config["TESSERA_MODELS__ROOT"])
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert mount["readOnly"] and volume["persistentVolumeClaim"]["claimName"] == "tessera-models"
    _one(docs, "PersistentVolumeClaim", "tessera-models")
    assert config["HF_HUB_OFFLINE"] == "1" and config["TESSERA_MODELS__PRESET"] == "sd15"


def test_dev_workers_run_on_the_cpu_with_tiny(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["k8s/overlays/dev"]
    text = yaml.safe_dump_all(docs)
    assert "nvidia.com/gpu" not in text
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    config = _named(docs, "ConfigMap", "tessera-config")["data"]
    assert config["TESSERA_MODELS__PRESET"] == "tiny"
    assert config["TESSERA_STORAGE__PUBLIC_ENDPOINT_URL"] == "http://localhost:9000"
    for worker in _workers(docs):
        env = {e["name"]: e["value"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["TESSERA_MODELS__DEVICE"] == "cpu"
    init = _one(docs, "Job", "minio-bucket-init")
    assert "mc mb --ignore-existing" in " ".join(init["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize("path", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_keda_scales_each_queue_separately_to_zero(rendered: dict[str, list[Manifest]], path: str) -> None:
    docs = rendered[path]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    queues = set()
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "KEDA owns the replica count"
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        # Celery's Redis transport keeps each queue in a list named after it.
        assert target["spec"]["template"]["spec"]["containers"][0]["args"] == ["--queues", meta["listName"]]
        assert meta["listLength"] == "1" and meta["address"] == "redis:6379"
        assert trigger["authenticationRef"] == {"name": "tessera-redis"}
        queues.add(meta["listName"])
    assert queues == {"train", "generate"} and len(scaled) == 2


@pytest.mark.parametrize("path", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_webhooks_worker_and_config_references(rendered: dict[str, list[Manifest]], path: str) -> None:
    docs = rendered[path]
    webhooks = _one(docs, "Deployment", "tessera-webhooks")
    container = webhooks["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["tessera", "worker"] and container["args"] == ["--queues", "webhooks"]
    assert container["image"].rsplit(":", 1)[0].endswith("tessera-api")
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    config_name = _named(docs, "ConfigMap", "tessera-config")["metadata"]["name"]
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        refs = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": config_name}} in refs
        (secret_ref,) = [r["secretRef"]["name"] for r in refs if "secretRef" in r]
        if path.endswith("dev"):
            assert secret_ref in secrets  # generated with development values
        else:
            assert secret_ref == "tessera-secrets" and not secrets  # created out of band, never in the repo


def test_redis_is_persistent_and_never_evicts(rendered: dict[str, list[Manifest]]) -> None:
    redis = _one(rendered["k8s/overlays/prod"], "StatefulSet", "redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"]


@pytest.mark.parametrize("path", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_redis_requires_the_password_that_the_pods_and_keda_read(
    rendered: dict[str, list[Manifest]], path: str
) -> None:
    docs = rendered[path]
    secret_name = _one(docs, "Deployment", "tessera-api")["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    (secret,) = [r["secretRef"]["name"] for r in secret_name if "secretRef" in r]
    container = _one(docs, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    expected = {"name": secret, "key": "TESSERA_REDIS__PASSWORD"}
    assert env["REDIS_PASSWORD"] == expected and env["REDISCLI_AUTH"] == expected
    auth = _one(docs, "TriggerAuthentication", "tessera-redis")
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "password", **expected}]
    # The password lives in the Secret only, never in the ConfigMap.
    config = _named(docs, "ConfigMap", "tessera-config")["data"]
    assert "TESSERA_REDIS__PASSWORD" not in config and "@" not in config["TESSERA_REDIS__URL"]
    if path.endswith("dev"):
        assert "TESSERA_REDIS__PASSWORD" in _named(docs, "Secret", "tessera-secrets")["data"]


def test_prod_settings_pass_the_production_checks_and_dev_is_development(rendered: dict[str, list[Manifest]]) -> None:
    from core.config import Settings

    prod = _named(rendered["k8s/overlays/prod"], "ConfigMap", "tessera-config")["data"]
    assert prod["TESSERA_ENVIRONMENT"] == "production"
    # What the pods get: the ConfigMap plus tessera-secrets (made out of band; stand-in values here).
    secrets = {"TESSERA_API_KEYS": "t:k", "TESSERA_REDIS__PASSWORD": "p", "TESSERA_STORAGE__URL_SECRET": "f" * 64}
    settings = Settings(**_nested({**prod, **secrets}))
    assert settings.environment == "production" and settings.storage.backend == "s3"
    dev = _named(rendered["k8s/overlays/dev"], "ConfigMap", "tessera-config")["data"]
    assert dev["TESSERA_ENVIRONMENT"] == "development"
    # KEDA counts waiting jobs only: a stopped pod finishes its job rather than handing it back to start over.
    assert prod["TESSERA_WORKER__ON_SIGTERM"] == dev["TESSERA_WORKER__ON_SIGTERM"] == "finish"


def _nested(env: dict[str, str]) -> dict[str, object]:
    """``TESSERA_A__B=v`` → ``{"a": {"b": "v"}}``: Settings' keyword form of environment variables."""
    out: dict[str, object] = {}
    for name, value in env.items():
        if not name.startswith("TESSERA_"):
            continue
        section, _, field = name.removeprefix("TESSERA_").lower().partition("__")
        if field:
            cast_section = out.setdefault(section, {})
            assert isinstance(cast_section, dict)
            cast_section[field] = value
        else:
            out[section] = value
    return out


def _reaches_internet(policy: Manifest) -> bool:
    for rule in policy["spec"].get("egress", []):
        if "to" not in rule:
            return True
        for peer in rule["to"]:
            block = peer.get("ipBlock")
            if block and block["cidr"] in {"0.0.0.0/0", "::/0"}:
                return True
    return False


@pytest.mark.parametrize("path", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_only_the_webhooks_worker_reaches_the_internet(rendered: dict[str, list[Manifest]], path: str) -> None:
    policies = [d for d in rendered[path] if d["kind"] == "NetworkPolicy"]
    deny = _one(policies, "NetworkPolicy", "tessera-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    open_to_internet = [p for p in policies if _reaches_internet(p)]
    assert [p["spec"]["podSelector"] for p in open_to_internet] == [
        {"matchLabels": {"app.kubernetes.io/name": "tessera-webhooks"}}
    ]
    (webhooks,) = open_to_internet
    excepted = {c for rule in webhooks["spec"]["egress"] for peer in rule["to"] for c in peer["ipBlock"]["except"]}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"} <= excepted
    # Nobody else gets an ipBlock wider than a private range.
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" in peer and policy is not webhooks:
                    assert int(peer["ipBlock"]["cidr"].split("/")[1]) >= 8, policy["metadata"]["name"]


def test_models_pull_job_fills_the_models_volume(rendered: dict[str, list[Manifest]]) -> None:
    docs = rendered["k8s/models-pull"]
    job = _one(docs, "Job", "tessera-models-pull")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["tessera", "models", "pull"]
    assert container["command"][container["command"].index("--dest") + 1] == "/models"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "0"
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] == "tessera-models"
    policy = _one(docs, "NetworkPolicy", "tessera-models-pull-egress")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "tessera-models-pull"}}


def _containers(docs: list[Manifest]) -> list[dict[str, Any]]:
    found = []
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        found += pod.get("containers", []) + pod.get("initContainers", [])
    return found


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_image_mapping_takes_effect(rendered: dict[str, list[Manifest]], path: str) -> None:
    """Each ``images:`` entry of a kustomization matches an image of what it builds on (an entry naming an image
    that a lower layer already renamed is silently ignored), and every Tessera container ends up on the image it
    names."""
    kustomization = yaml.safe_load((ROOT / path / "kustomization.yaml").read_text())
    mappings = kustomization.get("images", [])
    assert mappings, f"{path} names no images"
    ours = [c["image"] for c in _containers(rendered[path]) if c["image"].rsplit("/", 1)[-1].startswith("tessera-")]
    assert ours
    wanted = set()
    for mapping in mappings:
        name, tag = mapping.get("newName", mapping["name"]), mapping["newTag"]
        wanted.add(f"{name}:{tag}")
        assert f"{name}:{tag}" in ours, f"{path}: the images entry for {mapping['name']} matched no container"
    assert set(ours) <= wanted, f"{path}: containers left on images it did not choose: {set(ours) - wanted}"


def test_dev_overlay_runs_the_locally_built_images(rendered: dict[str, list[Manifest]]) -> None:
    images = {c["image"] for c in _containers(rendered["k8s/overlays/dev"])}
    ours = {i for i in images if "tessera-" in i}
    # The images the overlay's header says to build and load into the cluster, not the registry's.
    assert ours == {"tessera-api:dev", "tessera-worker:cpu"}, ours


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_no_deployment_an_hpa_scales_sets_replicas(rendered: dict[str, list[Manifest]], path: str) -> None:
    docs = rendered[path]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert "replicas" not in deployments[target["name"]]["spec"], (
            f"{path}: the HPA {hpa['metadata']['name']} owns it"
        )
