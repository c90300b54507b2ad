"""What a worker writes as a job's progress: every stage start and end and a stage's first and last steps, throttled
in between, never backwards, and final once the job ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from core.config import Settings
from core.errors import ServiceError
from core.job_record import JobRecord, new_id
from core.progress import DONE, Progress, generation_plan
from core.resources import JobProgress
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore
from core.stores.object_factory import make_object_store
from services.worker.context import WorkerContext
from services.worker.models import AdapterCache, ModelCache
from services.worker.run import JobRun, execute


@pytest.fixture
def ctx(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> WorkerContext:
    settings = Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
    )
    objects = make_object_store(settings.storage)
    return WorkerContext(
        settings=settings,
        jobs=JobStore(redis_client),
        catalog=Catalog(redis_client),
        objects=objects,
        models=ModelCache(settings.models),
        adapters=AdapterCache(tmp_path / "adapters", objects),
    )


def _events(jobs: JobStore, job_id: str) -> list[tuple[str, JobProgress | None]]:
    return [(event.record.status, event.progress) for event in jobs.read_events(job_id, count=10_000)]


def _submit(ctx: WorkerContext) -> str:
    record = JobRecord(id=new_id("job"), tenant="tenant-a", kind="generation", queue="gpu", input={})
    ctx.jobs.create(record)
    return record.id


def _generation(steps: int, *, fail_at: int | None = None) -> Any:
    def body(run: JobRun) -> dict[str, Any]:
        run.plan(generation_plan(styling=False))
        with run.stage("loading"):
            pass
        with run.stage("sampling"):
            report = run.reporter("sampling")
            for step in range(1, steps + 1):
                report(Progress("sampling", step, steps))
                if step == fail_at:
                    raise ServiceError("the sampler gave up")
        with run.stage("uploading"):
            pass
        return {"images": []}

    return body


def test_stage_edges_and_first_and_last_steps_are_written_and_the_end_is_done(ctx: WorkerContext) -> None:
    job_id = _submit(ctx)
    # 200 steps in well under REPORT_INTERVAL_S: only the edges get through the throttle.
    execute(ctx, job_id, _generation(200))
    events = _events(ctx.jobs, job_id)
    assert [s for s, _ in events][:2] == ["queued", "running"] and events[-1][0] == "succeeded"
    reports = [p for s, p in events if s == "running" and p is not None]
    points = [(p.stage, p.step, p.total_steps) for p in reports]
    for stage in ("loading", "sampling", "uploading"):
        assert (stage, 0, 1) in points, points  # its start
    assert ("loading", 1, 1) in points and ("uploading", 1, 1) in points  # their ends
    assert ("sampling", 1, 200) in points and ("sampling", 200, 200) in points  # first and last steps
    assert len(reports) < 20, points  # throttled
    fractions = [p.fraction for p in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(0.0 < f < 1.0 for f in fractions)
    assert events[-1][1] == DONE == ctx.jobs.get_progress(job_id)


def test_a_failed_job_keeps_the_progress_it_reached(ctx: WorkerContext) -> None:
    job_id = _submit(ctx)
    execute(ctx, job_id, _generation(4, fail_at=2))
    events = _events(ctx.jobs, job_id)
    assert events[-1][0] == "failed"
    last_running = [p for s, p in events if s == "running" and p is not None][-1]
    assert (last_running.stage, last_running.step) == ("sampling", 2)
    final = ctx.jobs.get_progress(job_id)
    assert final is not None and events[-1][1] == final
    assert final.model_dump(exclude={"eta_seconds"}) == last_running.model_dump(exclude={"eta_seconds"})
    assert final.eta_seconds is None and 0.0 < final.fraction < 1.0
