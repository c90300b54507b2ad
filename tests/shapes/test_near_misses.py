import itertools

import numpy as np
import pytest

from tessera_shapes import drawing, near_misses, sampling, world
from tessera_shapes.scorer import detect_objects


def test_every_kind_pretends_to_be_a_scored_shape() -> None:
    assert len(set(near_misses.KIND_NAMES)) == len(near_misses.KINDS)
    assert {k.pretends for k in near_misses.KINDS} == set(world.SCORED_SHAPES)
    assert near_misses.kind("pinched_square").pretends == "square"
    with pytest.raises(KeyError, match="pinched_square"):
        near_misses.kind("pinched_circle")


def test_a_near_miss_must_be_asked_for_as_the_shape_it_pretends_to_be() -> None:
    with pytest.raises(ValueError, match="pretends to be a square"):
        near_misses.draw_near_miss("pinched_square", world.ObjectSpec("red", "circle"), np.random.default_rng(0))


@pytest.mark.parametrize("kind", near_misses.KINDS, ids=lambda k: k.name)
def test_only_the_outline_differs_from_a_true_drawing(kind: near_misses.NearMissKind) -> None:
    spec = world.ObjectSpec("green", kind.pretends, "left", "striped")

    image = near_misses.draw_near_miss(kind.name, spec, np.random.default_rng(5))
    truth = np.asarray(drawing.render_scene(sampling.place_objects((spec,), np.random.default_rng(5))))
    (found,) = detect_objects(image)

    # Same background and placement (sampling.place_objects draws them first), another outline.
    assert np.array_equal(image[0, 0], truth[0, 0])
    assert not np.array_equal(image, truth)
    assert (found.colour, found.position, found.pattern) == ("green", "left", "striped")


def test_corpora_are_reproducible_and_mixed() -> None:
    first = near_misses.near_miss_corpus(2, 36, kinds=("blob",))
    again = near_misses.near_miss_corpus(2, 36, kinds=("blob",))

    assert len(first) == 72 and sum(d.softened for d in first) == 36
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    combos = {(d.expected[0].colour, d.expected[0].position, d.expected[0].pattern) for d in first}
    assert combos == set(itertools.product(world.COLOURS, world.POSITIONS, world.PATTERNS))
    assert all(d.kind == "blob" and d.expected[0].shape == "circle" for d in first)


def test_ground_truth_corpus_covers_the_grid_crisp_and_blurred() -> None:
    drawings = near_misses.ground_truth_corpus(0, pairs=4)

    grid = len(world.COLOURS) * len(world.SCORED_SHAPES) * len(world.PATTERNS) * len(world.POSITIONS)
    assert len(drawings) == 2 * (grid + 4)
    assert all(d.kind == near_misses.GROUND_TRUTH for d in drawings)
    assert [d.softened for d in drawings[:4]] == [False, True, False, True]
    assert len(drawings[-1].expected) == 2


def test_soften_blurs_edges_but_keeps_the_picture() -> None:
    image = np.asarray(
        drawing.render_scene(sampling.place_objects((world.ObjectSpec("red", "square"),), np.random.default_rng(0)))
    )

    soft = near_misses.soften(image, np.random.default_rng(1))

    assert soft.shape == image.shape and soft.dtype == np.uint8
    assert np.array_equal(soft, near_misses.soften(image, np.random.default_rng(1)))
    assert not np.array_equal(soft, image)
    assert np.abs(soft[0, 0].astype(int) - image[0, 0].astype(int)).max() <= 3
    # Blur spreads the edge: more pixels sit between background and object colour.
    partial = (np.abs(soft.astype(int) - image[0, 0].astype(int)).max(axis=2) > 20).sum()
    assert partial > (np.abs(image.astype(int) - image[0, 0].astype(int)).max(axis=2) > 20).sum()
