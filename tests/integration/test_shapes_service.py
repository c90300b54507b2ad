"""Personalization measured through the service itself: a held-out concept of the shapes world, taught over
HTTP to the `shapes` preset with the world's recipe, must be drawn where the scorer can see it."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from tessera_client import TesseraClient

from services.embedded import Stack
from tessera_shapes import world
from tessera_shapes.concept_measures import shows_concept
from tessera_shapes.personalization import SHAPES_RECIPE, class_word, concept_examples

pytestmark = pytest.mark.slow

SAMPLES = 8  # one generation job, num_outputs at its limit


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TesseraClient]:
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("shapes-stack"), preset="shapes", extra_env={"OMP_NUM_THREADS": "1"}
    )
    with stack, TesseraClient(stack.url, stack.api_key) as c:
        yield c


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("concept_name", "where", "floor"),
    [
        # What must hold (issue 3): a held-out concept learned through the API reaches 80% fidelity (a new shape:
        # in process, 16/16 of "a <green_ring>" and 16/16 at the sides).
        ("green_ring", "", 0.8),
        # purple_triangle is not held to a floor here: trained through the API (its six examples, no composites,
        # masks from the colour segmenter) it drew 0/8 on the left (2026-11-30), against 15/16 in process with
        # the eval recipe's composites; issue 10's note.
    ],
)
def test_a_concept_learned_through_the_api_reaches_the_fidelity_floor(
    client: TesseraClient, concept_name: str, where: str, floor: float
) -> None:
    concept = world.concept(concept_name)
    recipe = SHAPES_RECIPE
    images, captions = concept_examples(concept, count=recipe.num_images, seed=0, positions=recipe.example_positions)
    name = concept_name.replace("_", "-")
    training = client.create_training(
        {
            "concept": {"name": name, "class_word": class_word(concept)},
            "images": [client.upload_file(_png(image)).id for image in images],
            # The API's captions say <concept> where the concept's words go.
            "captions": [c.replace(f"<{concept.name}>", "<concept>") for c in captions],
            "options": recipe.training.model_dump(mode="json"),
        }
    )
    trained = client.wait(training.id, timeout=900)
    assert trained.status == "succeeded", trained.error

    generation = client.create_generation(
        {
            "prompt": f"a <{name}>{where}",
            # One concept without a region: it gets the whole image, i.e. plain ED-LoRA sampling.
            "concepts": [{"concept": name, "weight": recipe.lora_weight}],
            "fusion": "regional",
            "width": world.RESOLUTION,
            "height": world.RESOLUTION,
            "num_inference_steps": recipe.num_inference_steps,
            "guidance_scale": recipe.guidance_scale,
            "seed": 1234,
            "num_outputs": SAMPLES,
        }
    )
    generated = client.wait(generation.id, timeout=600)
    assert generated.status == "succeeded", generated.error
    outputs = generated.generation_output.images
    assert len(outputs) == SAMPLES
    hits = [
        shows_concept(np.asarray(Image.open(io.BytesIO(client.download(o.url))).convert("RGB")), concept)
        for o in outputs
    ]
    assert sum(hits) / SAMPLES >= floor, f"the scorer found <{name}> in {sum(hits)} of {SAMPLES} images"
