import numpy as np
import pytest

from core.ml.shapes import world


def test_same_seed_draws_the_same_pixels_and_captions() -> None:
    a_images, a_captions = world.draw_base_dataset(24, seed=5)
    b_images, b_captions = world.draw_base_dataset(24, seed=5)
    c_images, _ = world.draw_base_dataset(24, seed=6)

    assert a_images.shape == (24, 64, 64, 3)
    assert a_images.dtype == np.uint8
    assert np.array_equal(a_images, b_images)
    assert a_captions == b_captions
    assert not np.array_equal(a_images, c_images)


def test_any_scene_can_be_redrawn_alone() -> None:
    images, captions = world.draw_base_dataset(10, seed=3)

    scene = world.sample_base_scene(world.scene_rng(3, 7))

    assert scene.caption == captions[7]
    assert np.array_equal(np.asarray(world.render_scene(scene)), images[7])


def test_captions_name_the_drawn_objects() -> None:
    for i in range(200):
        scene = world.sample_base_scene(world.scene_rng(11, i))
        assert world.parse_caption(scene.caption) == scene.specs
        assert tuple(o.spec for o in scene.objects) == scene.specs
        for obj in scene.objects:
            x = obj.centre[0]
            expected = {"left": x < 24, "right": x > 40, "center": 24 <= x <= 40}
            assert expected[obj.spec.position]


def test_caption_forms() -> None:
    red_circle = world.ObjectSpec("red", "circle")
    blue_square = world.ObjectSpec("blue", "square")

    assert world.caption_for([red_circle]) == "a red circle"
    assert world.caption_for([red_circle], centre_phrase=True) == "a red circle in the center"
    assert world.caption_for([blue_square.at("right")]) == "a blue square on the right"
    assert (
        world.caption_for([red_circle.at("left"), blue_square.at("right")])
        == "a red circle on the left and a blue square on the right"
    )
    assert world.caption_for([world.concept("orange_ring").spec]) == "an orange ring"
    assert world.caption_for([world.concept("striped_square").spec]) == "a striped yellow square"


def test_parse_caption_round_trips_and_rejects_other_text() -> None:
    specs = (world.ObjectSpec("purple", "star", "left"), world.ObjectSpec("green", "triangle", "right", "striped"))

    assert world.parse_caption(world.caption_for(specs)) == specs
    assert world.parse_caption("a red circle in the center") == (world.ObjectSpec("red", "circle"),)
    with pytest.raises(ValueError, match="caption"):
        world.parse_caption("a dog on the beach")
    with pytest.raises(ValueError, match="colour"):
        world.parse_caption("a pink circle")


def test_base_world_never_shows_held_out_traits_or_pairs() -> None:
    held_colours = set(world.HELD_OUT_COLOURS)
    held_shapes = set(world.HELD_OUT_SHAPES)
    seen_pairs = set()
    for i in range(3000):
        scene = world.sample_base_scene(world.scene_rng(0, i))
        for spec in scene.specs:
            assert spec.colour not in held_colours
            assert spec.shape not in held_shapes
            assert spec.pattern == "solid"
        if len(scene.specs) == 2:
            seen_pairs.add(scene.specs)

    assert not seen_pairs & world.HELD_OUT_PAIRS
    assert len(world.HELD_OUT_PAIRS) == 12
    for c in world.HELD_OUT_CONCEPTS:
        assert c.spec.colour in held_colours or c.spec.shape in held_shapes or c.spec.pattern != "solid"


def test_vocabulary_covers_every_caption_word() -> None:
    words = set(world.VOCABULARY)
    for i in range(300):
        assert set(world.sample_base_scene(world.scene_rng(1, i)).caption.split()) <= words
    for c in world.HELD_OUT_CONCEPTS:
        assert set(c.spec.noun_phrase.split()) <= words


def test_wide_world_is_seeded_and_varied() -> None:
    a = world.draw_wide_dataset(16, seed=2)

    assert np.array_equal(a, world.draw_wide_dataset(16, seed=2))
    assert a.shape == (16, 64, 64, 3)
    assert len({tuple(img[32, 32]) for img in a}) > 4


def test_object_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="`shape`"):
        world.ObjectSpec("red", "blob")
    with pytest.raises(ValueError, match="`position`"):
        world.ObjectSpec("red", "circle", "top")
