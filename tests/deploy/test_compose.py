"""docker-compose.yml: it is valid for Compose (``docker-compose config -q``) and has the parts the service needs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROFILES = ["--profile", "gpu", "--profile", "cpu", "--profile", "metrics"]


def _compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


needs_compose = pytest.mark.skipif(
    _compose_binary() is None,
    reason="docker-compose not installed (apt-get install -y --no-install-recommends docker-compose, "
    "or `make deploy-tools` as root)",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def _env() -> dict[str, str]:
    # No user-set TESSERA_*/MINIO_* value may change what is checked.
    return {k: v for k, v in os.environ.items() if not k.startswith(("TESSERA_", "MINIO_", "COMPOSE_"))}


@needs_compose
@pytest.mark.parametrize("profiles", [[], PROFILES], ids=["default", "all-profiles"])
def test_compose_config_is_valid(profiles: list[str]) -> None:
    binary = _compose_binary()
    assert binary is not None
    result = subprocess.run(
        [*binary, "-f", str(COMPOSE_FILE), *profiles, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "redis",
        "minio",
        "minio-init",
        "api",
        "webhooks",
        "worker",
        "worker-cpu",
        "prometheus",
    }


def test_gpu_worker_reserves_a_gpu_and_the_cpu_worker_runs_tiny(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["TESSERA_MODELS__DEVICE"] == "cuda"
    assert worker["profiles"] == ["gpu"]
    cpu = compose["services"]["worker-cpu"]
    assert "deploy" not in cpu and cpu["profiles"] == ["cpu"]
    assert cpu["environment"]["TESSERA_MODELS__PRESET"] == "${TESSERA_PRESET:-tiny}"
    assert cpu["environment"]["TESSERA_MODELS__DEVICE"] == "cpu"
    for service in (worker, cpu):
        assert service["build"]["dockerfile"] == "docker/worker.Dockerfile"
        assert service["command"] == ["--queues", "train,generate"]
        assert any(v.endswith(":/models") for v in service["volumes"])
        assert service["stop_signal"] == "SIGTERM"
    # Nothing else asks for a GPU.
    others = {n: s for n, s in compose["services"].items() if n not in {"worker", "worker-cpu"}}
    assert not [n for n, s in others.items() if "deploy" in s]


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("redis", "minio", "api", "webhooks", "worker", "worker-cpu", "prometheus"):
        assert services[name]["healthcheck"]["test"], name
    # curl is gone from the MinIO image since RELEASE.2023-11-01; `mc ready local` works on the current one.
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert ":9100/metrics" in " ".join(services["worker"]["healthcheck"]["test"])


def test_bucket_init_runs_once_after_minio_is_healthy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = services["minio-init"]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    script = " ".join(init["command"])
    assert "mc mb --ignore-existing tessera/tessera" in script
    assert init["restart"] == "no"
    for name in ("api", "webhooks", "worker", "worker-cpu"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "minio-init": {"condition": "service_completed_successfully"},
        }, name


def test_redis_keeps_everything(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])


def test_presigned_urls_are_signed_for_the_browsers_address(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    assert env["TESSERA_STORAGE__ENDPOINT_URL"] == "http://minio:9000"
    assert env["TESSERA_STORAGE__PUBLIC_ENDPOINT_URL"] == "${TESSERA_PUBLIC_S3_URL:-http://localhost:9000}"
    assert "127.0.0.1:9000:9000" in compose["services"]["minio"]["ports"]
    assert env["TESSERA_STORAGE__BACKEND"] == "s3"


def test_webhooks_worker_uses_the_api_image_without_a_gpu(compose: dict[str, Any]) -> None:
    webhooks = compose["services"]["webhooks"]
    assert webhooks["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert webhooks["entrypoint"] == ["tessera", "worker"]
    assert webhooks["command"] == ["--queues", "webhooks"]


def test_prometheus_scrapes_the_api_and_the_workers(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tessera-api"]["static_configs"][0]["targets"] == ["api:8000"]
    worker_names = {n for sd in jobs["tessera-worker"]["dns_sd_configs"] for n in sd["names"]}
    assert worker_names == {"worker", "worker-cpu"}
    assert all(sd["port"] == 9100 for j in ("tessera-worker", "tessera-webhooks") for sd in jobs[j]["dns_sd_configs"])
