"""Training with neighbours (``composites``): the request field's 422s name the field and the limit, the plan
records where each neighbour's cut-outs come from, and a worker run in-process (tiny preset, real Redis, local
object store, no Celery) trains on composites and reports them, or reports that the other-object term was idle."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from core.config import Settings
from core.errors import InvalidRequestError
from core.ml.masks.segmenter import ConceptMasks, MaskSource
from core.plans import TrainingPlan
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore
from core.stores.object_factory import make_object_store
from services.api.app import create_app
from services.worker.context import WorkerContext
from services.worker.models import AdapterCache, ModelCache
from services.worker.run import execute
from services.worker.training import Neighbour, class_phrase, neighbour_cutouts, run_training, training_examples
from tests.services.test_api import A, make_ready_concept, upload

RED, BLUE = (200, 40, 40), (40, 40, 200)


def photo(colour: tuple[int, int, int], seed: int) -> bytes:
    """64x64 PNG: a noisy grey background with a coloured square in the middle."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(100, 156, size=(64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def square_mask() -> bytes:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def settings(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    redis_client.flushdb()
    return Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
        # cpu_threads 0 leaves torch's thread count alone (OMP_NUM_THREADS decides) for the rest of the session.
        models={
            "preset": "tiny",
            "root": tmp_path_factory.getbasetemp() / "composites-models",
            "adapter_cache_dir": tmp_path / "adapters",
            "cpu_threads": 0,
        },
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, enqueue=lambda _record: None)) as c:
        yield c


def train_body(client: TestClient, name: str, colour: tuple[int, int, int], **extra: Any) -> dict[str, Any]:
    images = [upload(client, photo(colour, seed))["id"] for seed in (0, 1)]
    masks = [upload(client, square_mask())["id"] for _ in images]
    options = {"max_train_steps": 2, "batch_size": 4, "separation_loss_weight": 1.0, "seed": 0}
    return {
        "concept": {"name": name, "class_word": "dog"},
        "images": images,
        "masks": masks,
        "options": options,
    } | extra


def submit(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/v1/trainings", json=body, headers=A)
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("composites", "field", "words"),
    [
        ({"neighbours": ["tabby"], "share": 1.5}, "composites.share", "less than or equal to 1"),
        ({"neighbours": ["tabby"], "share": -0.5}, "composites.share", "greater than or equal to 0"),
        ({"neighbours": []}, "composites.neighbours", "at least 1"),
        ({"neighbours": ["a", "b", "c", "d", "e"]}, "composites.neighbours", "at most 4"),
        ({"neighbours": ["tabby", "tabby"]}, "composites.neighbours", "must not repeat"),
        ({"neighbours": ["<tabby>"]}, "composites.neighbours", "concept name or id"),
        ({"neighbours": ["tabby"], "count": 0}, "composites.count", "greater than or equal to 1"),
        ({"neighbours": ["tabby"], "count": 201}, "composites.count", "less than or equal to 200"),
        ({"neighbours": ["tabby"], "background": "beach"}, "composites.background", "'concept' or 'flat'"),
        ({"neighbours": ["tabby"], "class_words": ["cat"]}, "composites.class_words", "Extra inputs"),
        ({"share": 0.5}, "composites.neighbours", "Field required"),
    ],
)
def test_bad_composites_are_a_422_naming_the_field_and_limit(
    client: TestClient, composites: dict[str, Any], field: str, words: str
) -> None:
    body = train_body(client, "rex", RED, composites=composites)
    r = client.post("/v1/trainings", json=body, headers=A)
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert field in errors and words in errors[field], errors
    assert client.get("/v1/jobs", headers=A).json()["data"] == []


def test_neighbours_must_be_other_stored_concepts(client: TestClient, settings: Settings) -> None:
    def refused(neighbours: list[str], name: str = "rex") -> dict[str, Any]:
        body = train_body(client, name, RED, composites={"neighbours": neighbours})
        r = client.post("/v1/trainings", json=body, headers=A)
        assert r.status_code == 422, r.text
        return r.json()  # type: ignore[no-any-return]

    unknown = refused(["ghost"])
    assert unknown["code"] == "unknown_concept" and unknown["errors"][0]["field"] == "composites.neighbours[0]"
    # A concept whose training job (and so its list of images) is gone.
    make_ready_concept(settings, "tenant-a", "old")
    expired = refused(["old"])
    assert expired["code"] == "neighbour_images_expired" and "old" in expired["detail"]
    tabby = submit(client, train_body(client, "tabby", BLUE))
    same = refused([tabby["input"]["concept"]["name"], client.get("/v1/concepts/tabby", headers=A).json()["id"]])
    assert same["errors"][0]["field"] == "composites.neighbours[1]" and "same concept" in same["detail"]
    itself = refused(["tabby"], name="tabby")
    assert "the concept this request trains" in itself["detail"]
    # Its training images deleted: refused before anything is queued.
    client.delete(f"/v1/files/{tabby['input']['images'][1]}", headers=A)
    gone = refused(["tabby"])
    assert gone["code"] == "neighbour_images_expired"
    assert client.get("/v1/concepts/rex", headers=A).status_code == 404


def test_the_plan_names_each_neighbours_images_and_masks(client: TestClient, settings: Settings) -> None:
    tabby = submit(client, train_body(client, "tabby", BLUE))
    job = submit(client, train_body(client, "rex", RED, composites={"neighbours": ["tabby"], "share": 0.25}))
    assert job["input"]["composites"] == {
        "neighbours": ["tabby"],
        "share": 0.25,
        "count": None,
        "background": "concept",
    }
    record = JobStore(redis.Redis.from_url(settings.redis.url)).get(job["id"])
    assert isinstance(record.plan, TrainingPlan)
    (neighbour,) = record.plan.neighbours or []
    tabby_plan = JobStore(redis.Redis.from_url(settings.redis.url)).get(tabby["id"]).plan
    assert isinstance(tabby_plan, TrainingPlan)
    assert neighbour.name == "tabby" and neighbour.class_word == "dog"
    assert neighbour.image_keys == tabby_plan.image_keys and neighbour.mask_keys == tabby_plan.mask_keys
    assert "composites" in client.get("/openapi.json").json()["components"]["schemas"]["TrainingRequest"]["properties"]


def worker_context(settings: Settings) -> WorkerContext:
    client = redis.Redis.from_url(settings.redis.url)
    objects = make_object_store(settings.storage)
    return WorkerContext(
        settings=settings,
        jobs=JobStore(client),
        catalog=Catalog(client),
        objects=objects,
        models=ModelCache(settings.models),
        adapters=AdapterCache(settings.models.adapter_cache_dir, objects),
    )


def run(ctx: WorkerContext, job_id: str) -> dict[str, Any]:
    execute(ctx, job_id, run_training)
    record = ctx.jobs.get(job_id)
    assert record.status == "succeeded", record.error
    assert record.output is not None
    return record.output


def test_worker_trains_on_composites_and_says_when_the_other_term_is_idle(
    client: TestClient, settings: Settings
) -> None:
    ctx = worker_context(settings)
    tabby = submit(client, train_body(client, "tabby", BLUE))
    alone = run(ctx, tabby["id"])["diagnostics"]
    # The concept's photos show it alone: the loss is on, but its other-object term had nothing to act on.
    assert alone["composites"] is None and alone["separation_other_term"] == "no_other_objects"
    assert alone["examples_with_other_objects"] == 0 and "composites" in alone["warnings"][0]

    rex = submit(client, train_body(client, "rex", RED, composites={"neighbours": ["tabby"]}))
    output = run(ctx, rex["id"])
    diagnostics = output["diagnostics"]
    assert diagnostics["composites"] == {"count": 2, "examples": 4, "share": 0.5, "neighbours": ["tabby"]}
    assert diagnostics["separation_other_term"] == "active" and diagnostics["examples_with_other_objects"] == 2
    assert all(v > 0 for v in diagnostics["attention_on_other_objects_during_training"].values())
    assert diagnostics["warnings"] == []
    # The output masks are still those of the request's own images.
    assert len(output["masks"]) == 2
    stages = ctx.jobs.get(rex["id"]).stages
    assert "compositing" in stages and "training" in stages


def test_a_style_concept_cannot_be_composited(client: TestClient) -> None:
    submit(client, train_body(client, "tabby", BLUE))
    body = train_body(client, "rex", RED, composites={"neighbours": ["tabby"]})
    body["options"]["concept_type"] = "style"
    r = client.post("/v1/trainings", json=body, headers=A)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "composites", r.text


def _masks(*concepts: np.ndarray, source: MaskSource = "user") -> list[ConceptMasks]:
    return [ConceptMasks(c, np.zeros_like(c), source) for c in concepts]


def test_unusable_masks_are_left_out_of_composites_with_clear_errors() -> None:
    square = np.zeros((64, 64), bool)
    square[16:48, 16:48] = True
    whole = np.ones((64, 64), bool)
    images = [Image.open(io.BytesIO(photo(RED, seed))) for seed in (0, 1)]
    good = Neighbour("tabby", class_phrase("cat"), images, _masks(square, square))
    fallback = Neighbour("owl", class_phrase("owl"), images, _masks(square, square, source="whole_image"))
    cutouts = neighbour_cutouts([good, fallback])
    assert [c.phrase for c in cutouts] == ["a cat", "a cat"]
    with pytest.raises(InvalidRequestError) as error:
        neighbour_cutouts([fallback])
    assert error.value.field == "composites.neighbours" and "<owl>" in error.value.message

    request = TrainingPlan.model_validate(
        {
            "concept_id": "cpt_rex",
            "concept": {"name": "rex", "class_word": "dog"},
            "image_keys": ["k1", "k2"],
            "options": {},
            "composites": {"neighbours": ["x"]},
        }
    )
    examples = training_examples(request, images, _masks(square, whole), None, [good], 64)
    assert sum(e.composite for e in examples) == 2 and len(examples) == 4
    with pytest.raises(InvalidRequestError) as error:
        training_examples(request, images, _masks(whole, whole), None, [good], 64)
    assert error.value.field == "composites" and "mask_prompts" in error.value.message
    # A share that rounds to no composite trains on the images as they are.
    none = request.model_copy(update={"composites": request.composites.model_copy(update={"share": 0.1})})  # type: ignore[union-attr]
    assert [e.image for e in training_examples(none, images, _masks(square, whole), None, [], 64)] == images
