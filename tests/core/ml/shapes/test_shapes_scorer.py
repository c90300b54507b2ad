import itertools

import numpy as np
import pytest

from core.ml.shapes import world
from core.ml.shapes.scorer import detect_objects, score_caption, score_image


def _ground_truth_scenes() -> list[world.Scene]:
    """Every colour x scored shape x pattern at every position, plus random left/right pairs (>= 200)."""
    rng = np.random.default_rng(2024)
    scenes = [
        world.place_objects((world.ObjectSpec(colour, shape, position, pattern),), rng)
        for colour, shape, pattern, position in itertools.product(
            world.COLOURS, world.SCORED_SHAPES, world.PATTERNS, world.POSITIONS
        )
    ]
    colours, shapes = list(world.COLOURS), world.SCORED_SHAPES
    for _ in range(120):
        pair = tuple(
            world.ObjectSpec(
                colours[rng.integers(len(colours))],
                shapes[rng.integers(len(shapes))],
                side,
                world.PATTERNS[int(rng.random() < 0.25)],
            )
            for side in ("left", "right")
        )
        scenes.append(world.place_objects(pair, rng))
    return scenes


def test_scorer_is_right_on_ground_truth() -> None:
    scenes = _ground_truth_scenes()

    results = [score_image(world.render_scene(s), s.specs) for s in scenes]
    accuracy = sum(r.correct for r in results) / len(results)

    assert len(scenes) >= 200
    assert accuracy >= 0.99
    assert not any(r.leakage for r in results)


def test_scorer_reads_every_held_out_concept() -> None:
    rng = np.random.default_rng(7)
    for concept in world.HELD_OUT_CONCEPTS:
        for position in world.POSITIONS:
            scene = world.place_objects((concept.spec.at(position),), rng)
            assert score_image(world.render_scene(scene), scene.specs).correct, concept.name


def _render(specs: tuple[world.ObjectSpec, ...], seed: int = 0) -> np.ndarray:
    return np.asarray(world.render_scene(world.place_objects(specs, np.random.default_rng(seed))))


RED_CIRCLE = world.ObjectSpec("red", "circle", "left")
BLUE_SQUARE = world.ObjectSpec("blue", "square", "right")


def test_swapped_positions_are_caught() -> None:
    image = _render((BLUE_SQUARE.at("left"), RED_CIRCLE.at("right")))

    score = score_image(image, (RED_CIRCLE, BLUE_SQUARE))

    assert not score.correct
    assert score.position_swap
    assert all(v.colour_ok and v.shape_ok and not v.position_ok for v in score.objects)


def test_colour_leakage_is_caught() -> None:
    # The square wears the circle's red.
    image = _render((RED_CIRCLE, world.ObjectSpec("red", "square", "right")))

    score = score_image(image, (RED_CIRCLE, BLUE_SQUARE))

    assert not score.correct
    assert score.leakage
    square = score.objects[1]
    assert square.colour_leak and not square.shape_leak and not square.colour_ok


def test_shape_leakage_is_caught() -> None:
    image = _render((RED_CIRCLE, world.ObjectSpec("blue", "circle", "right")))

    score = score_caption(image, "a red circle on the left and a blue square on the right")

    assert score.objects[1].shape_leak and not score.objects[1].colour_leak
    assert not score.correct


def test_wrong_shape_and_colour_and_pattern_are_caught() -> None:
    spec = world.ObjectSpec("green", "triangle")
    for drawn in (
        world.ObjectSpec("green", "star"),
        world.ObjectSpec("yellow", "triangle"),
        world.ObjectSpec("green", "triangle", pattern="striped"),
        world.ObjectSpec("green", "triangle", "left"),
    ):
        assert not score_image(_render((drawn,)), (spec,)).correct, drawn


def test_missing_and_extra_objects_are_caught() -> None:
    empty = np.full((64, 64, 3), 240, dtype=np.uint8)
    missing = score_image(empty, (RED_CIRCLE,))
    extra = score_image(_render((RED_CIRCLE, BLUE_SQUARE)), (RED_CIRCLE,))

    assert missing.objects[0].found is None and not missing.correct
    assert extra.extra_objects == 1 and not extra.correct


@pytest.mark.parametrize("shape", world.SCORED_SHAPES)
def test_detect_objects_reports_traits(shape: str) -> None:
    (found,) = detect_objects(_render((world.ObjectSpec("blue", shape, "right"),)))

    assert (found.colour, found.shape, found.position, found.pattern) == ("blue", shape, "right", "solid")
    assert found.shape_iou > 0.8
