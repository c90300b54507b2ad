"""Progress as a client sees it, over real HTTP against `tessera serve`'s stack on the tiny preset: polled, streamed
(SSE) and delivered by webhook, a short training's and a generation's overall fraction never goes back, shows values
between 0 and 1 on the way, and ends the same on all three."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.demo import sample_images
from services.embedded import Stack
from tests.fixtures.receiver import Receiver, receiver

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "canceled"}
DONE = {"fraction": 1.0, "stage": "done", "stage_fraction": 1.0, "step": 1, "total_steps": 1, "eta_seconds": 0.0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        data_dir=tmp_path_factory.mktemp("progress-stack"),
        preset="tiny",
        extra_env={
            "OMP_NUM_THREADS": "1",
            # The test receiver listens on loopback over plain http.
            "TESSERA_WEBHOOKS__ALLOW_PRIVATE": "true",
            "TESSERA_WEBHOOKS__ALLOW_HTTP": "true",
            "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000",
        },
    )
    with s:
        yield s


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30) as c:
        yield c


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The Job of every ``data`` event of an SSE stream (comments and ids skipped)."""
    data: list[str] = []
    for line in lines:
        if line == "" and data:
            yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class Watch:
    """One job seen three ways at once: GET polled every ``poll`` seconds, its SSE stream, and its webhooks."""

    def __init__(self, http: httpx.Client, job_id: str, hook: Receiver, poll: float = 0.1) -> None:
        self.http, self.job_id, self.hook, self.poll = http, job_id, hook, poll
        self.polled: list[dict[str, Any]] = []
        self.streamed: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self.http.stream("GET", f"/v1/jobs/{self.job_id}/events", timeout=None) as response:
            for job in _sse(response.iter_lines()):
                self.streamed.append(job)
                if job["status"] in TERMINAL:
                    return

    def until_done(self, timeout: float = 300, on_poll: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{self.job_id}").raise_for_status().json()
            self.polled.append(job)
            if job["status"] in TERMINAL:
                self._reader.join(timeout=30)
                return job
            if on_poll is not None:
                on_poll(job)
            time.sleep(self.poll)
        raise TimeoutError(f"job {self.job_id} did not end")

    def webhooks(self, count_completed: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = [json.loads(r.body) for r in self.hook.requests]
            done = [b for b in bodies if b["type"] == "job.completed" and b["data"]["id"] == self.job_id]
            if len(done) >= count_completed:
                return [b for b in bodies if b["data"]["id"] == self.job_id]
            time.sleep(0.1)
        raise TimeoutError(f"no job.completed webhook for {self.job_id}")


def _fractions(jobs: list[dict[str, Any]]) -> list[float]:
    return [j["progress"]["fraction"] for j in jobs if j["status"] == "running" and j["progress"]]


def _check(watch: Watch, final: dict[str, Any], status: str, *, polled_midway: bool = True) -> dict[str, Any]:
    """The fraction never goes back, shows intermediate values, and the end agrees on GET, SSE and webhooks.

    ``polled_midway=False`` for a job shorter than a few polls (a 4-step generation on tiny ends within one poll
    interval on a fast run), where only the event stream is sure to show the way.
    """
    assert final["status"] == status, final["error"]
    polled, streamed = _fractions(watch.polled), _fractions(watch.streamed)
    assert polled == sorted(polled), polled
    assert streamed == sorted(streamed), streamed
    if polled_midway:
        assert any(0.0 < f < 1.0 for f in polled), polled  # a poller sees the job on its way
    assert len({f for f in streamed if 0.0 < f < 1.0}) >= 3, streamed  # every stage edge is an event
    assert watch.streamed[-1]["status"] == status
    bodies = watch.webhooks()
    completed = [b for b in bodies if b["type"] == "job.completed"]
    assert completed[0]["data"]["status"] == status
    # GET now, the terminal SSE event and the job.completed body show the same final progress.
    assert final["progress"] == watch.streamed[-1]["progress"] == completed[0]["data"]["progress"]
    again = watch.http.get(f"/v1/jobs/{watch.job_id}").json()
    assert again["progress"] == final["progress"]
    hooked = [b["data"]["progress"]["fraction"] for b in bodies if b["type"] == "job.progress"]
    assert all(0.0 <= f <= 1.0 for f in hooked) and hooked, bodies
    progress: dict[str, Any] = final["progress"]
    return progress


def _upload(http: httpx.Client, data: bytes) -> str:
    response = http.post("/v1/files", files={"file": ("x.png", data, "image/png")})
    return str(response.raise_for_status().json()["id"])


def _train(http: httpx.Client, hook: Receiver, name: str, steps: int) -> str:
    files = [_upload(http, d) for d in sample_images("star", 64, 2)]
    body = {
        "concept": {"name": name, "class_word": "star"},
        "images": files,
        "options": {"max_train_steps": steps, "batch_size": 1, "seed": 1},
        "webhook": hook.url,
        "webhook_events_filter": ["progress", "completed"],
    }
    return str(http.post("/v1/trainings", json=body).raise_for_status().json()["id"])


def test_short_training_then_generation_progress_agrees_everywhere(http: httpx.Client) -> None:
    with receiver() as hook:
        # A six-step training polled every 250 ms used to show only 0.0 until it ended.
        watch = Watch(http, _train(http, hook, "progressed", steps=6), hook, poll=0.25)
        assert _check(watch, watch.until_done(), "succeeded") == DONE
        stages = [j["progress"]["stage"] for j in watch.streamed if j["status"] == "running" and j["progress"]]
        assert {"downloading", "training", "uploading"} <= set(stages)

        body = {
            "prompt": "a <progressed> on a table",
            "concepts": [{"concept": "progressed"}],
            "fusion": "regional",
            "width": 64,
            "height": 64,
            "num_inference_steps": 4,
            "seed": 3,
            "webhook": hook.url,
            "webhook_events_filter": ["progress", "completed"],
        }
        job_id = http.post("/v1/generations", json=body).raise_for_status().json()["id"]
        watch = Watch(http, job_id, hook)
        assert _check(watch, watch.until_done(), "succeeded", polled_midway=False) == DONE
        sampling = [j["progress"] for j in watch.streamed if j["progress"] and j["progress"]["stage"] == "sampling"]
        assert [p["step"] for p in sampling if p["step"]][:1] == [1]  # the first step is always written
        assert sampling[-1]["stage_fraction"] == 1.0


def test_canceled_training_keeps_the_progress_it_reached(http: httpx.Client) -> None:
    with receiver() as hook:
        watch = Watch(http, _train(http, hook, "halted", steps=5000), hook)
        asked: list[bool] = []

        def cancel_once_training(job: dict[str, Any]) -> None:
            progress = job["progress"] or {}
            if not asked and progress.get("stage") == "training" and progress.get("step", 0) >= 2:
                http.post(f"/v1/jobs/{watch.job_id}/cancel").raise_for_status()
                asked.append(True)

        final = watch.until_done(on_poll=cancel_once_training)
        progress = _check(watch, final, "canceled")
        assert progress["stage"] == "training" and progress["eta_seconds"] is None
        assert 0.0 < progress["fraction"] < 1.0 and progress["step"] >= 2
        # Frozen: the last value reached, not a later or reset one.
        assert progress["fraction"] >= max(_fractions(watch.polled))
