"""Seg-Mix composites: exact disjoint masks, captions in image order, determinism, the share, clear refusals, and
the separation loss's other-object term acting on the tiny preset only when composites give it other objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch

from core.errors import InvalidRequestError
from core.ml.components import SDComponents
from core.ml.edlora.composites import Cutout, TrainingExample, compose_examples, composite_count
from core.ml.edlora.planes import fill_from_surroundings
from core.ml.edlora.trainer import train_edlora
from core.training_options import EDLoRAConfig

GREEN, RED, BLUE, WHITE = (40, 160, 60), (210, 30, 30), (30, 40, 220), (250, 250, 250)


def photo(
    colour: tuple[int, int, int], background: tuple[int, int, int], *, size: tuple[int, int] = (96, 80)
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A flat photo with one anti-aliasing-free disc, and its exact mask."""
    image = PIL.Image.new("RGB", size, background)
    mask = PIL.Image.new("L", size, 0)
    box = (30, 14, 70, 66)
    PIL.ImageDraw.Draw(image).ellipse(box, fill=colour)
    PIL.ImageDraw.Draw(mask).ellipse(box, fill=255)
    return image, mask


def concept_examples() -> list[TrainingExample]:
    return [TrainingExample(*photo(RED, GREEN)), TrainingExample(*photo(RED, GREEN, size=(80, 100)))]


def neighbour_cutouts() -> list[Cutout]:
    return [Cutout(*photo(BLUE, WHITE), "a blue ball")]


def arrays(example: TrainingExample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert example.others is not None
    pixels = np.asarray(example.image, dtype=np.float64)
    return pixels, np.asarray(example.mask, np.float64) / 255, np.asarray(example.others, np.float64) / 255


def test_composites_have_exact_disjoint_masks_and_captions_in_image_order() -> None:
    examples = compose_examples(concept_examples(), neighbour_cutouts(), count=8, seed=0, resolution=64, share=1.0)
    assert len(examples) == 8 and all(e.composite for e in examples)
    sides = set()
    for example in examples:
        assert example.image.size == (64, 64) and example.image.mode == "RGB"
        pixels, concept, others = arrays(example)
        # Disjoint supports, each object wholly inside its half.
        assert not ((concept > 0) & (others > 0)).any()
        concept_left = bool(concept[:, :32].any())
        assert concept[:, 32:].any() != concept_left and others[:, 32:].any() == concept_left
        assert others[:, :32].any() != concept_left
        # Exact: every pixel is the plate (the concept photo's flat green, its disc filled in) blended with the
        # objects' colours by exactly the returned masks (up to uint8 rounding).
        expected = (
            np.array(GREEN) * (1 - concept - others)[..., None]
            + np.array(RED) * concept[..., None]
            + np.array(BLUE) * others[..., None]
        )
        assert np.abs(pixels - expected).max() <= 1.0
        assert (concept == 1).sum() > 50 and (others == 1).sum() > 50
        left, right = ("a <concept>", "a blue ball") if concept_left else ("a blue ball", "a <concept>")
        assert example.caption == f"{left} on the left and {right} on the right"
        sides.add(concept_left)
    assert sides == {True, False}, "both orders"


def test_same_seed_same_pixels_other_seed_other_layouts() -> None:
    def run(seed: int) -> list[bytes]:
        examples = compose_examples(
            concept_examples(), neighbour_cutouts(), count=6, seed=seed, resolution=64, share=0.5
        )
        return [e.image.tobytes() + e.mask.tobytes() + str(e.caption).encode() for e in examples]

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize(("count", "share", "composites"), [(10, 0.3, 3), (4, 0.5, 2), (5, 0.5, 3), (3, 0.0, 0)])
def test_the_share_of_composites_is_respected_and_originals_come_first_unchanged(
    count: int, share: float, composites: int
) -> None:
    concept = concept_examples()
    neighbours = neighbour_cutouts() if composites else []
    examples = compose_examples(concept, neighbours, count=count, seed=1, resolution=32, share=share)
    assert composite_count(count, share) == composites
    assert len(examples) == count and sum(e.composite for e in examples) == composites
    originals = examples[: count - composites]
    assert all(e in concept for e in originals) and not any(e.composite for e in originals)
    # Cycled: every example of the concept appears before any appears twice.
    used = [concept.index(e) for e in originals]
    assert max(used.count(i) for i in range(len(concept))) - min(used.count(i) for i in range(len(concept))) <= 1


def test_objects_already_in_the_concept_photo_stay_marked_and_unusable_examples_only_train_alone() -> None:
    image, mask = photo(RED, GREEN)
    PIL.ImageDraw.Draw(image).rectangle((0, 0, 95, 8), fill=BLUE)  # a shelf along the top, marked in `others`
    shelf = PIL.Image.new("L", image.size, 0)
    PIL.ImageDraw.Draw(shelf).rectangle((0, 0, 95, 8), fill=255)
    whole = TrainingExample(image, PIL.Image.new("L", image.size, 255))
    concept = [TrainingExample(image, mask, others=shelf), whole]
    examples = compose_examples(concept, neighbour_cutouts(), count=6, seed=2, resolution=64, share=0.5)
    composites = [e for e in examples if e.composite]
    for example in composites:
        _, concept_mask, others = arrays(example)
        # The shelf (top rows of the centre crop) is marked wherever no pasted object covers it.
        top = others[:3]
        assert top[concept_mask[:3] == 0].min() > 0.5
        assert not ((concept_mask > 0) & (others > 0)).any()
    # The whole-image example cannot be cut out, but still trains as itself.
    assert whole in examples
    with pytest.raises(InvalidRequestError) as error:
        compose_examples([whole], neighbour_cutouts(), count=2, seed=0, resolution=64)
    assert error.value.field == "concept"


def test_objects_stay_within_the_vertical_band() -> None:
    examples = compose_examples(
        concept_examples(), neighbour_cutouts(), count=6, seed=5, resolution=64, share=1.0, vertical=(0.25, 0.75)
    )
    for example in examples:
        _, concept, others = arrays(example)
        rows = np.nonzero((concept + others).sum(axis=1))[0]
        assert rows.min() >= 16 and rows.max() < 48


def test_flat_background_is_the_photos_median_background_colour() -> None:
    examples = compose_examples(
        concept_examples(), neighbour_cutouts(), count=2, seed=0, resolution=32, share=1.0, background="flat"
    )
    pixels, concept, others = arrays(examples[0])
    assert (pixels[(concept == 0) & (others == 0)] == np.array(GREEN)).all()


def test_fill_keeps_known_pixels_and_fills_a_flat_surround_flat() -> None:
    pixels = torch.rand(3, 20, 24)
    known = torch.ones(1, 20, 24)
    known[:, 5:15, 6:18] = 0.0
    filled = fill_from_surroundings(pixels, known)
    assert torch.equal(filled[:, known[0] == 1], pixels[:, known[0] == 1])
    flat = torch.full((3, 20, 24), 0.25)
    flat[:, 5:15, 6:18] = 1.0  # whatever was under the hole must not show
    assert torch.allclose(fill_from_surroundings(flat, known), torch.full_like(flat, 0.25), atol=1e-6)


def _compose(**changes: Any) -> None:
    arguments: dict[str, Any] = {
        "concept": concept_examples(),
        "neighbours": neighbour_cutouts(),
        "count": 4,
        "seed": 0,
        "resolution": 64,
        "share": 0.5,
    } | changes
    compose_examples(arguments.pop("concept"), arguments.pop("neighbours"), **arguments)


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"concept": []}, "concept", "at least 1"),
        ({"count": 0}, "count", "at least 1"),
        ({"share": 1.5}, "share", "0..1"),
        ({"share": -0.1}, "share", "0..1"),
        ({"resolution": 63}, "resolution", ">= 16"),
        ({"scale": (0.9, 0.5)}, "scale", "low <= high"),
        ({"neighbours": []}, "neighbours", "at least 1"),
        ({"neighbours": [Cutout(*photo(BLUE, WHITE), "a <tabby>")]}, "neighbours[0].phrase", "plain words"),
        ({"neighbours": [Cutout(*photo(BLUE, WHITE), " ")]}, "neighbours[0].phrase", "1..80"),
        (
            {"neighbours": [Cutout(photo(BLUE, WHITE)[0], PIL.Image.new("L", (96, 80), 0), "a ball")]},
            "neighbours[0].mask",
            "all-black",
        ),
        ({"vertical": (0.5, 0.5)}, "vertical", "top < bottom"),
        ({"concept_phrase": "a dog"}, "concept_phrase", "<concept>"),
        ({"caption_template": "{left} and {left}"}, "caption_template", "{right}"),
    ],
)
def test_bad_inputs_are_refused_naming_the_argument(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        _compose(**changes)
    assert error.value.field == field and words in error.value.message, error.value.message


def _square_photo(colour: tuple[int, int, int], seed: int) -> TrainingExample:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(100, 156, size=(64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = colour
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return TrainingExample(PIL.Image.fromarray(pixels), PIL.Image.fromarray(mask))


def _train(components: SDComponents, examples: list[TrainingExample]) -> dict[str, Any]:
    config = EDLoRAConfig(max_train_steps=2, batch_size=len(examples), separation_loss_weight=1.0)
    weights = train_edlora(
        components,
        [e.image for e in examples],
        concept_name="corgi",
        class_word="dog",
        config=config,
        masks=[e.mask for e in examples],
        other_masks=[e.others for e in examples],
        captions=[e.caption for e in examples],
    )
    return weights.training_options


def test_the_other_object_term_acts_with_composites_and_is_zero_without(components: SDComponents) -> None:
    concept = [_square_photo((200, 40, 40), 0), _square_photo((180, 60, 30), 1)]
    neighbour = _square_photo((40, 40, 200), 2)
    alone = _train(components, concept)
    assert alone["separation_other_term"] == "no_other_objects" and alone["examples_with_other_objects"] == 0
    assert set(alone["attention_on_other_objects_during_training"].values()) == {0.0}

    examples = compose_examples(
        concept, [Cutout(neighbour.image, neighbour.mask, "a cat")], count=4, seed=0, resolution=64, share=0.5
    )
    # Originals keep the default templates (caption None) beside the composites' own captions.
    assert [e.caption is None for e in examples] == [True, True, False, False]
    mixed = _train(components, examples)
    assert mixed["separation_other_term"] == "active" and mixed["examples_with_other_objects"] == 2
    on_others = mixed["attention_on_other_objects_during_training"]
    assert set(on_others) == {"8", "4"} and all(0.0 < v < 1.0 for v in on_others.values()), on_others


def test_captions_all_none_train_exactly_as_no_captions(components: SDComponents) -> None:
    examples = [_square_photo((200, 40, 40), 0), _square_photo((180, 60, 30), 1)]
    config = EDLoRAConfig(max_train_steps=1, batch_size=2, separation_loss_weight=0.0)
    images = [e.image for e in examples]
    plain = train_edlora(components, images, concept_name="corgi", class_word="dog", config=config)
    nones = train_edlora(
        components, images, concept_name="corgi", class_word="dog", config=config, captions=[None, None]
    )
    assert torch.equal(plain.token_embeddings, nones.token_embeddings)
