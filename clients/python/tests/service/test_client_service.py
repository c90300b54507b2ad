"""The client against the real service: `tessera serve`'s stack (private Redis, uvicorn API, Celery worker, local
object store) on the tiny preset. Typed errors, async events as they happen, a dropped stream resumed with
Last-Event-ID through a proxy that cuts it, and the client's models kept in step with the served OpenAPI document.

These need the server's packages, so they run in the project's venv (``make test``), not in ``make client-test``.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from tessera_client import (
    AsyncTesseraClient,
    AuthenticationError,
    InvalidImage,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    TesseraClient,
    UnknownConcept,
    models,
)

from services.demo import sample_images
from services.embedded import Stack
from tests.reliability.proxy import Outage

pytestmark = pytest.mark.slow

QUICK = RetryPolicy(attempts=4, initial=0.1, max_backoff=1.0, jitter=0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        data_dir=tmp_path_factory.mktemp("client-stack"),
        preset="tiny",
        extra_env={"OMP_NUM_THREADS": "1", "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000"},
    )
    with s:
        yield s


@pytest.fixture
def client(stack: Stack) -> Iterator[TesseraClient]:
    with TesseraClient(stack.url, stack.api_key, retry=QUICK) as c:
        yield c


def _training_body(client: TesseraClient, name: str, steps: int) -> dict[str, Any]:
    files = [client.upload_file(d).id for d in sample_images("star", 64, 2)]
    return {
        "concept": {"name": name, "class_word": "star"},
        "images": files,
        "options": {"max_train_steps": steps, "batch_size": 1, "seed": 1},
    }


# ---- typed errors ------------------------------------------------------------------------------------------


def test_errors_from_the_service_are_typed(client: TesseraClient, stack: Stack) -> None:
    with pytest.raises(InvalidImage) as junk:
        client.upload_file(b"this is not an image", filename="junk.png")
    assert junk.value.status == 415 and junk.value.problem.errors and junk.value.problem.errors[0].field == "file"
    with pytest.raises(InvalidImage):
        client.upload_file(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, filename="truncated.png")
    with pytest.raises(NotFound):
        client.get_job("job_doesnotexist")
    with pytest.raises(UnknownConcept):
        client.create_generation({"prompt": "a <nobody-here>", "num_inference_steps": 1})
    with pytest.raises(InvalidRequest) as invalid:
        client.create_generation({"prompt": "a star", "width": 65})
    assert invalid.value.code == "validation_error"
    assert [e.field for e in invalid.value.problem.errors or []] == ["width"]
    with TesseraClient(stack.url, "not-a-key") as stranger, pytest.raises(AuthenticationError):
        stranger.get_job("job_doesnotexist")


def test_async_errors_are_the_same_types(stack: Stack) -> None:
    async def run() -> list[type[BaseException]]:
        raised: list[type[BaseException]] = []
        async with AsyncTesseraClient(stack.url, stack.api_key, retry=QUICK) as client:
            for call in (
                client.upload_file(b"junk"),
                client.get_concept("nobody"),
                client.create_generation({"prompt": "a <nobody-here>"}),
            ):
                try:
                    await call
                except Exception as exc:
                    raised.append(type(exc))
        return raised

    assert asyncio.run(run()) == [InvalidImage, NotFound, UnknownConcept]


# ---- jobs, sync and async ----------------------------------------------------------------------------------


def test_a_create_call_replays_with_its_idempotency_key(client: TesseraClient) -> None:
    body = _training_body(client, "replayed", steps=2)
    first = client.create_training(body, idempotency_key="same-training")
    again = client.create_training(body, idempotency_key="same-training")
    assert again.id == first.id
    final = client.wait(first.id, timeout=300)
    assert final.status == "succeeded", final.error
    assert final.training_output.concept_id == client.get_concept("replayed").id


def test_async_events_arrive_one_by_one_before_the_job_ends(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    async def run() -> tuple[list[tuple[float, models.Job]], models.Job, dict[str, Any]]:
        async with AsyncTesseraClient(stack.url, stack.api_key, retry=QUICK) as client:
            files = [(await client.upload_file(d)).id for d in sample_images("ring", 64, 2)]
            job = await client.create_training(
                {
                    "concept": {"name": "async-ring", "class_word": "ring"},
                    "images": files,
                    "options": {"max_train_steps": 120, "batch_size": 1, "seed": 2},
                }
            )
            arrivals = []
            async for event in client.events(job.id):
                arrivals.append((time.time(), event.job))
            final = await client.wait(job.id, progress="async training")
            # The calls the async client once lacked, against the same job.
            listed = await client.list_jobs(kind="training", limit=100)
            file = await client.get_file(files[0])
            concept = await client.get_concept("async-ring")
            secret = await client.webhook_secret()
            await client.delete_concept("async-ring")
            try:
                await client.get_concept("async-ring")
                deleted = False
            except NotFound:
                deleted = True
            extras = {"listed": [j.id for j in listed.data], "file": file, "concept": concept, "secret": secret}
            extras["deleted"] = deleted
            return arrivals, final, extras

    arrivals, final, extras = asyncio.run(run())
    assert final.status == "succeeded", final.error
    assert final.completed_at is not None
    # The events came as the job moved: the first ones long before it completed, not in one batch at the end.
    done = final.completed_at.timestamp()
    assert arrivals[0][1].status in ("queued", "running") and arrivals[-1][1].terminal
    early = [at for at, j in arrivals if not j.terminal and at < done]
    assert len(early) >= 2 and arrivals[-1][0] - arrivals[0][0] > 0.5, [(at - done, j.status) for at, j in arrivals]
    fractions = [j.progress.fraction for _, j in arrivals if j.progress is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert final.id in extras["listed"] and extras["file"].width == 64 and extras["file"].url
    assert extras["concept"].status == "ready" and extras["deleted"] and extras["secret"].startswith("whsec_")
    # wait(progress=...) drew its line on stderr.
    drawn = capsys.readouterr().err
    assert "async training" in drawn and "100%" in drawn


# ---- a dropped event stream --------------------------------------------------------------------------------


def test_a_dropped_event_stream_resumes_with_last_event_id(client: TesseraClient, stack: Stack) -> None:
    proxy = Outage(stack.port)
    proxy.up()
    # Long enough never to end by itself during the test: it is canceled once the stream has resumed.
    job = client.create_training(_training_body(client, "dropped", steps=5000))
    events: list[models.JobEvent] = []
    resumed: list[models.JobEvent] = []
    trace: list[tuple[int, str | None, str]] = []
    cut_at: int | None = None
    try:
        with TesseraClient(proxy.url, stack.api_key, retry=QUICK) as through_proxy:
            for event in through_proxy.events(job.id, reconnects=8):
                events.append(event)
                trace.append((proxy.connections, event.id, event.job.status))
                if cut_at is not None and proxy.connections > cut_at:
                    resumed.append(event)
                    if len(resumed) == 2:
                        client.cancel(job.id)
                elif cut_at is None and event.job.status == "running":
                    # Cut the open stream and refuse connections for a moment, as a restarting proxy would.
                    # (The proxy also cuts a connection idle for 5 s, e.g. while the job waits for the worker;
                    # the client resumes from those too.)
                    cut_at = proxy.connections
                    proxy.down()
                    threading.Timer(0.5, proxy.up).start()
    finally:
        proxy.down()
        client.cancel(job.id)  # on failure too: the worker is needed by the tests after this one
    assert cut_at is not None and len(resumed) >= 2, trace
    assert events[-1].job.terminal and events[-1].job.status == "canceled"
    # Resumed after the last event it had: the same ids, once each, as a full replay of the finished job's stream.
    replay = [e.id for e in client.events(job.id)]
    assert [e.id for e in events] == replay


# ---- the models and the served OpenAPI document ------------------------------------------------------------

# Every schema the server answers with, and the client model that reads it. A schema the server starts to send
# that is missing here fails the test below, as does a field of it that the client model lacks.
CLIENT_MODELS: dict[str, type[BaseModel]] = {
    "Job": models.Job,
    "JobProgress": models.JobProgress,
    "JobError": models.JobError,
    "JobMetrics": models.JobMetrics,
    "JobUrls": models.JobUrls,
    "Image": models.OutputImage,
    "TrainingOutput": models.TrainingOutput,
    "GenerationOutput": models.GenerationOutput,
    "JobList": models.JobList,
    "FileObject": models.File,
    "AdapterInfo": models.AdapterInfo,
    "Concept": models.Concept,
    "ConceptList": models.ConceptList,
    "WebhookSecret": models.WebhookSecret,
    "DeliveryAttempt": models.DeliveryAttempt,
    "DeliveryList": models.DeliveryList,
    "Problem": models.Problem,
    "FieldError": models.FieldError,
}
# Answers that are not JSON objects the client parses: health checks, metrics, docs pages, signed-object bytes.
NOT_CLIENT_ROUTES = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/problems", "/openapi.json", "/v1/objects")


def _name(ref: str) -> str:
    # FastAPI names a model's response variant "<Model>-Output" when it differs from the request one.
    return ref.rsplit("/", 1)[-1].removesuffix("-Output")


def _types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types (and ``ref:<Model>`` for objects of a named model) that ``schema`` admits; ``any`` for {}."""
    if "$ref" in schema:
        return {f"ref:{_name(schema['$ref'])}"}
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return set().union(*(_types(s, defs) for s in schema[key]))
    if "const" in schema:
        return {f"const:{schema['const']}"}
    if "enum" in schema:
        return {f"const:{v}" for v in schema["enum"]}
    kind = schema.get("type")
    if kind is None:
        return {"any"}
    kinds = set(kind) if isinstance(kind, list) else {kind}
    if "array" in kinds:
        kinds = (kinds - {"array"}) | {f"array[{t}]" for t in _types(schema.get("items", {}), defs)}
    return kinds


def _accepts(client: set[str], server: str) -> bool:
    if "any" in client or server in client:
        return True
    if server == "integer" and "number" in client:
        return True
    if server.startswith("const:"):
        return "string" in client or any(c.startswith("const:") and c == server for c in client)
    if server.startswith("ref:"):
        mapped = CLIENT_MODELS.get(server[4:])
        return mapped is not None and (f"ref:{mapped.__name__}" in client or "object" in client)
    if server.startswith("array["):
        inner = server[6:-1]
        items = {c[6:-1] for c in client if c.startswith("array[")}
        return _accepts(items, inner)
    return False


def _response_schemas(document: dict[str, Any]) -> set[str]:
    """Every named schema reachable from a JSON answer of a client route."""
    schemas = document["components"]["schemas"]
    pending: list[str] = []
    for path, operations in document["paths"].items():
        if path.startswith(NOT_CLIENT_ROUTES):
            continue
        for operation in operations.values():
            for answer in operation.get("responses", {}).values():
                for media, content in (answer.get("content") or {}).items():
                    if "json" in media and "$ref" in content.get("schema", {}):
                        pending.append(content["schema"]["$ref"].rsplit("/", 1)[-1])
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        pending += [ref.rsplit("/", 1)[-1] for ref in _refs(schemas[name])]
    return found


def _refs(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def test_client_models_cover_every_field_of_the_served_openapi_document(stack: Stack) -> None:
    document = httpx.get(f"{stack.url}/openapi.json", timeout=30).raise_for_status().json()
    schemas = document["components"]["schemas"]
    served = _response_schemas(document)
    assert {"Job", "FileObject", "Concept", "Problem"} <= {_name(n) for n in served}
    problems = []
    for raw_name in sorted(served):
        name = _name(raw_name)
        model = CLIENT_MODELS.get(name)
        if model is None:
            problems.append(f"the server answers with {raw_name}; the client has no model for it")
            continue
        client_schema = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        client_props = client_schema.get("properties", {})
        server_schema = schemas[raw_name]
        for field, server_prop in server_schema.get("properties", {}).items():
            if field not in client_props:
                problems.append(f"{name}.{field}: sent by the server, missing in {model.__name__}")
                continue
            client_types = _types(client_props[field], {})
            for kind in _types(server_prop, schemas):
                if not _accepts(client_types, kind):
                    problems.append(
                        f"{name}.{field}: the server may send {kind}, {model.__name__} takes {client_types}"
                    )
        # A field the client requires must be one the server always sends.
        server_required = set(server_schema.get("required", []))
        for field in client_schema.get("required", []):
            if field not in server_required:
                problems.append(f"{name}.{field}: required by {model.__name__}, optional in the server's schema")
    assert not problems, "\n".join(problems)


def test_the_drift_check_catches_a_missing_field_and_a_wrong_type() -> None:
    # The comparison above must be able to fail: a model without a served field, and one of a narrower type.
    server = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}}}
    assert _accepts(_types({"type": "number"}, {}), "integer")
    assert not _accepts(_types({"type": "integer"}, {}), "string")
    assert not _accepts(_types({"anyOf": [{"type": "string"}]}, {}), "null")
    assert _types(server["properties"]["b"], {}) == {"string"}
    assert _accepts({"ref:OutputImage"}, "ref:Image") and not _accepts({"ref:OutputImage"}, "ref:Concept")


def test_download_saves_the_outputs_the_demo_prints(client: TesseraClient, tmp_path: Path) -> None:
    from services.demo import save_outputs

    job = client.create_generation({"prompt": "a star", "num_inference_steps": 1, "width": 64, "height": 64}, wait=60)
    final = job if job.terminal else client.wait(job.id, timeout=300)
    assert final.status == "succeeded", final.error
    saved = save_outputs(client, final, tmp_path, final.generation_output.images, "image")
    assert saved == [tmp_path / final.id / "image-0.png"]
    from PIL import Image

    assert Image.open(io.BytesIO(saved[0].read_bytes())).size == (64, 64)
