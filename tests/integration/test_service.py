"""The whole path over real HTTP: `tessera serve`'s stack (private redis-server, uvicorn API, Celery worker
process, local object store) on the tiny preset: upload → train → generate, cancel, and a worker crash."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import standardwebhooks
from PIL import Image
from tessera_client import Job, TesseraClient

from core.stores.job_store import JobStore
from services.demo import sample_images
from services.embedded import Stack
from services.processes import wait_for
from tests.fixtures.receiver import receiver
from tests.reliability import ledger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A short lease so that a killed worker's job is handed back within seconds.
    s = Stack(
        data_dir=tmp_path_factory.mktemp("stack"),
        preset="tiny",
        extra_env={
            "TESSERA_WORKER__LEASE_SECONDS": "2",
            "OMP_NUM_THREADS": "1",
            # The test receiver listens on loopback over plain http.
            "TESSERA_WEBHOOKS__ALLOW_PRIVATE": "true",
            "TESSERA_WEBHOOKS__ALLOW_HTTP": "true",
            "TESSERA_WEBHOOKS__RETRY_DELAYS_SECONDS": "[0.5, 0.5, 0.5]",
            "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000",
        },
    )
    with s:
        yield s


@pytest.fixture
def client(stack: Stack) -> Iterator[TesseraClient]:
    with TesseraClient(stack.url, stack.api_key) as c:
        yield c


def _train(client: TesseraClient, name: str, steps: int, kind: str = "star") -> Job:
    files = [client.upload_file(d).id for d in sample_images(kind, 64, 3)]
    return client.create_training(
        {
            "concept": {"name": name, "class_word": "star"},
            "images": files,
            "options": {"max_train_steps": steps, "batch_size": 1, "seed": 1},
        }
    )


def _wait_running(client: TesseraClient, job_id: str, min_step: int = 1, timeout: float = 120) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        progress = job.progress
        if job.status == "running" and progress is not None and progress.stage == "training":
            if (progress.step or 0) >= min_step:
                return job
        assert job.status in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never got to training step {min_step}")


def _pixels(client: TesseraClient, job: Job) -> np.ndarray:
    data = client.download(job.generation_output.images[0].url)
    assert data.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(data)))


def test_upload_train_generate_end_to_end(client: TesseraClient) -> None:
    jobs = {name: _train(client, name, steps=12, kind=kind) for name, kind in (("star-a", "star"), ("ring-b", "ring"))}
    final = client.wait(jobs["star-a"].id, poll=0.1, timeout=300)
    assert final.status == "succeeded", final.error
    # Every recorded state, replayed from the event stream (polling can miss the throttled reports):
    # each stage has its own stage_fraction (masking, then training, ...); within training it rises and never goes
    # back (the overall fraction is checked in tests/integration/test_progress.py).
    training_fractions = [
        j.progress.stage_fraction
        for j in (event.job for event in client.events(jobs["star-a"].id))
        if j.progress and j.progress.stage == "training" and j.progress.stage_fraction > 0
    ]
    assert training_fractions == sorted(training_fractions) and len(set(training_fractions)) > 1, training_fractions
    assert training_fractions[-1] == 1.0  # the last step is always reported
    assert final.training_output.concept_id.startswith("cpt_")
    # The masks the training used (SAM, no prompt: one per image) and the attention-in-mask diagnostic.
    masks = final.training_output.masks
    assert len(masks) == 3 and all(m.file_id.startswith("file_") and m.url for m in masks)
    assert client.download(masks[0].url).startswith(b"\x89PNG")
    diagnostics = final.training_output.diagnostics
    assert 0.0 <= diagnostics["attention_in_mask"] <= 1.0
    assert set(diagnostics["mask_sources"]) <= {"auto", "whole_image"}  # the tiny SAM is random
    curve = diagnostics["loss_curve"]
    assert [p["step"] for p in curve] == sorted(p["step"] for p in curve) and curve[-1]["step"] > 1
    assert final.metrics.stages["masking"] > 0
    assert final.metrics.stages["training"] > 0
    assert client.wait(jobs["ring-b"].id, timeout=300).status == "succeeded"
    concept = client.get_concept("star-a")
    assert concept.status == "ready" and concept.adapter is not None and concept.adapter.format == "tessera.edlora"

    body = {
        "prompt": "a <star-a> on the left and a <ring-b> on the right",
        "concepts": [
            {"concept": "star-a", "region": {"box": [0, 0, 0.5, 1]}},
            {"concept": "ring-b", "region": {"box": [0.5, 0, 1, 1]}},
        ],
        "fusion": "regional",
        "width": 80,
        "height": 64,
        "num_inference_steps": 4,
        "guidance_scale": 4.0,
        "seed": 3,
    }
    first = client.wait(client.create_generation(body).id, timeout=300)
    assert first.status == "succeeded", first.error
    image = _pixels(client, first)
    assert image.shape[:2] == (64, 80)
    assert len(first.generation_output.masks or []) == 2 and first.generation_output.images[0].seed == 3
    second = client.wait(client.create_generation(body).id, timeout=300)
    assert np.array_equal(image, _pixels(client, second)), "same seed must give the same pixels"

    # The default fusion (Concept Conductor) with the styling stage: stage-1 images, per-image masks, styled images.
    style = client.upload_file(sample_images("ring", 64, 1)[0]).id
    styled_body = {key: value for key, value in body.items() if key != "fusion"} | {
        "style": {"image": style, "mode": "style"},
        "control": {"type": "softedge", "scale": 0.6},
    }
    styled = client.wait(client.create_generation(styled_body).id, timeout=300)
    assert styled.status == "succeeded", styled.error
    output = styled.generation_output
    assert output.stage1_images is not None and output.masks is not None
    assert len(output.images) == len(output.stage1_images) == 1 and len(output.masks) == 2
    assert output.images[0].file_id != output.stage1_images[0].file_id
    assert {"sampling", "styling", "uploading"} <= set(styled.metrics.stages)


def test_cancel_running_training(client: TesseraClient, stack: Stack) -> None:
    job = _train(client, "long-cancel", steps=5000)
    _wait_running(client, job.id, min_step=2)
    asked = time.monotonic()
    client.cancel(job.id)
    final = client.wait(job.id, poll=0.05, timeout=30)
    assert final.status == "canceled" and time.monotonic() - asked < 5
    concept = client.get_concept("long-cancel")
    assert concept.status == "failed" and concept.adapter is None
    adapters = list((stack.data_dir / "objects").rglob("*long-cancel*")) + [
        p for p in (stack.data_dir / "objects").rglob("adapter.safetensors") if concept.id in str(p)
    ]
    assert adapters == []


def test_worker_killed_mid_training_is_rerun(client: TesseraClient, stack: Stack) -> None:
    job = _train(client, "survivor", steps=150)
    _wait_running(client, job.id, min_step=3)
    stack.children["worker"].kill()
    assert client.get_job(job.id).status in ("running", "queued")
    stack.start_worker()
    final = client.wait(job.id, timeout=300)
    assert final.status == "succeeded", final.error
    assert client.get_concept("survivor").status == "ready"
    # The reaper handed the job back exactly once; the dead worker's run never finished it.
    record = JobStore(redis.Redis.from_url(stack.redis_url)).get(job.id)
    ok = record.redeliveries == 1 and record.status == "succeeded"
    ledger.record("fault", "sigkill-mid-training", ok=ok, jobs=1, lost=0 if final.status == "succeeded" else 1)
    assert ok, record


def test_events_resume_with_last_event_id_and_webhooks_arrive_signed(client: TesseraClient, stack: Stack) -> None:
    secret = client.webhook_secret()
    # job.started is answered 200; the first job.completed attempt 500, its retry 200.
    with receiver(script=[200, 500]) as hook:
        files = [client.upload_file(d).id for d in sample_images("star", 64, 2)]
        job = client.create_training(
            {
                "concept": {"name": "evented", "class_word": "star"},
                "images": files,
                "options": {"max_train_steps": 6, "batch_size": 1},
                "webhook": hook.url,
                "webhook_events_filter": ["start", "completed"],
            }
        )
        seen: list[tuple[str, str]] = []
        # Read two events, drop the connection (leaving the loop closes it), resume from the last id until the
        # terminal event.
        for event in client.events(job.id):
            seen.append((event.id or "", event.job.status))
            if len(seen) == 2:
                break
        for event in client.events(job.id, last_event_id=seen[-1][0]):
            seen.append((event.id or "", event.job.status))
        statuses = [s for _, s in seen]
        assert statuses[0] == "queued" and statuses[-1] == "succeeded"
        assert statuses == sorted(statuses, key=["queued", "running", "succeeded"].index), statuses
        ids = [i for i, _ in seen if i]
        assert len(ids) == len(set(ids))
        deadline = time.monotonic() + 30
        while len(hook.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    types = [json.loads(r.body)["type"] for r in hook.requests]
    assert types.count("job.started") == 1 and types.count("job.completed") == 2, types
    completed = [r for r in hook.requests if json.loads(r.body)["type"] == "job.completed"]
    assert completed[0].headers["webhook-id"] == completed[1].headers["webhook-id"]
    for request in hook.requests:
        payload = standardwebhooks.Webhook(secret).verify(request.body, request.headers)
        assert payload["data"]["id"] == job.id
    log = client.webhook_deliveries(job.id).data
    assert [a.status_code for a in log if a.type == "job.completed"] == [500, 200]


def test_stack_metrics(stack: Stack) -> None:
    api = httpx.get(f"{stack.url}/metrics").text
    assert "tessera_jobs_finished_total" in api and "tessera_queue_depth" in api
    # The GPU worker started last (an earlier test replaced the first one).
    name = [n for n in stack.children if n.startswith("worker") and stack.children[n].alive()][-1]
    url = f"http://127.0.0.1:{stack.metrics_ports[name]}/metrics"
    # The worker serves metrics once it is ready to take jobs, which may be after the API.
    wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, what="worker metrics", timeout=60)
    assert "tessera_worker_stage_seconds" in httpx.get(url).text
    # Like the API, the embedded workers' metrics listen on loopback only.
    for port in stack.metrics_ports.values():
        assert _listening_addresses(port) <= {"127.0.0.1"}, port
    assert _listening_addresses(stack.metrics_ports[name]) == {"127.0.0.1"}


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a TCP socket listening on ``port`` on this machine (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found
