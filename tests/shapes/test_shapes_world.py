import numpy as np
import pytest

from tessera_shapes import captioning, drawing, sampling, world


def test_same_seed_draws_the_same_pixels_and_captions() -> None:
    a_images, a_captions, a_specs = sampling.draw_base_dataset(24, seed=5)
    b_images, b_captions, b_specs = sampling.draw_base_dataset(24, seed=5)
    c_images = sampling.draw_base_dataset(24, seed=6).images

    assert a_images.shape == (24, 64, 64, 3)
    assert a_images.dtype == np.uint8
    assert np.array_equal(a_images, b_images)
    assert a_captions == b_captions and a_specs == b_specs
    assert not np.array_equal(a_images, c_images)


def test_any_scene_can_be_redrawn_alone() -> None:
    images, captions, _ = sampling.draw_base_dataset(10, seed=3)

    scene = sampling.sample_base_scene(sampling.scene_rng(3, 7))

    assert scene.caption == captions[7]
    assert np.array_equal(np.asarray(drawing.render_scene(scene)), images[7])


def _said(specs: tuple[world.ObjectSpec, ...]) -> set[tuple[str, str]]:
    return {(s.shape, s.position) for s in specs}


def _colours_agree(said: tuple[world.ObjectSpec, ...], drawn: tuple[world.ObjectSpec, ...]) -> bool:
    by_position = {s.position: s for s in drawn}
    return all(s.colour in (world.ANY_COLOUR, by_position[s.position].colour) for s in said)


def test_captions_name_the_drawn_objects() -> None:
    for i in range(300):
        scene = sampling.sample_base_scene(sampling.scene_rng(11, i))
        said = captioning.parse_caption(scene.caption)
        assert _said(said) == _said(scene.specs) and len(said) == len(scene.specs)
        assert _colours_agree(said, scene.specs)
        assert tuple(o.spec for o in scene.objects) == scene.specs
        for obj in scene.objects:
            x = obj.centre[0]
            expected = {"left": x < 24, "right": x > 40, "center": 24 <= x <= 40}
            assert expected[obj.spec.position]


def test_captions_vary_so_no_word_is_tied_to_a_token_index() -> None:
    scenes = [sampling.sample_base_scene(sampling.scene_rng(4, i)) for i in range(2000)]
    captions = [s.caption for s in scenes]
    pairs = [s for s in scenes if len(s.specs) == 2]
    rows = [s for s in scenes if len(s.specs) == 3]

    right_first = [s for s in pairs if s.caption.index("right") < s.caption.index("left")]
    assert 0.4 < len(right_first) / len(pairs) < 0.6
    assert 0.05 < len(rows) / len(scenes) < 0.15
    colourless = [c for c in captions if any(p.colour == world.ANY_COLOUR for p in captioning.parse_caption(c))]
    assert 0.2 < len(colourless) / len(captions) < 0.6
    assert any(c.startswith("the ") for c in captions) and any(" solid " in f" {c} " for c in captions)
    # Token counts differ for the same kind of scene, so positions in the sequence cannot stand for meanings.
    assert len({len(s.caption.split()) for s in pairs}) >= 4


def test_describe_words_the_same_objects_differently() -> None:
    specs = (world.ObjectSpec("red", "circle", "left"), world.ObjectSpec("blue", "square", "right"))
    rng = np.random.default_rng(0)
    captions = {captioning.describe(specs, rng) for _ in range(50)}

    assert len(captions) > 10
    for caption in captions:
        said = captioning.parse_caption(caption)
        assert _said(said) == _said(specs) and _colours_agree(said, specs)
    fixed = captioning.CaptionStyle(drop_colour=0, definite=0, solid_word=0, shuffle=False)
    assert captioning.describe(specs, rng, fixed) == captioning.caption_for(specs)


def test_an_object_without_a_colour_word_takes_any_colour() -> None:
    (spec,) = captioning.parse_caption("the triangle on the right")

    assert spec == world.ObjectSpec(world.ANY_COLOUR, "triangle", "right")
    assert captioning.caption_for([spec]) == "a triangle on the right"


def test_caption_forms() -> None:
    red_circle = world.ObjectSpec("red", "circle")
    blue_square = world.ObjectSpec("blue", "square")

    assert captioning.caption_for([red_circle]) == "a red circle"
    assert captioning.caption_for([red_circle], centre_phrase=True) == "a red circle in the center"
    assert captioning.caption_for([blue_square.at("right")]) == "a blue square on the right"
    assert (
        captioning.caption_for([red_circle.at("left"), blue_square.at("right")])
        == "a red circle on the left and a blue square on the right"
    )
    assert captioning.caption_for([world.concept("orange_ring").spec]) == "an orange ring"
    assert captioning.caption_for([world.concept("striped_square").spec]) == "a striped yellow square"


def test_parse_caption_round_trips_and_rejects_other_text() -> None:
    specs = (world.ObjectSpec("purple", "star", "left"), world.ObjectSpec("green", "triangle", "right", "striped"))

    assert captioning.parse_caption(captioning.caption_for(specs)) == specs
    assert captioning.parse_caption("a red circle in the center") == (world.ObjectSpec("red", "circle"),)
    with pytest.raises(ValueError, match="caption"):
        captioning.parse_caption("a dog on the beach")
    with pytest.raises(ValueError, match="colour"):
        captioning.parse_caption("a pink circle")


def test_base_world_never_shows_held_out_traits_or_pairs() -> None:
    held_colours = set(world.HELD_OUT_COLOURS)
    held_shapes = set(world.HELD_OUT_SHAPES)
    seen_pairs = set()
    for i in range(3000):
        scene = sampling.sample_base_scene(sampling.scene_rng(0, i))
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
        assert set(sampling.sample_base_scene(sampling.scene_rng(1, i)).caption.split()) <= words
    for c in world.HELD_OUT_CONCEPTS:
        assert set(c.spec.noun_phrase.split()) <= words


def test_wide_world_is_seeded_and_varied() -> None:
    a = sampling.draw_wide_dataset(16, seed=2)

    assert np.array_equal(a, sampling.draw_wide_dataset(16, seed=2))
    assert a.shape == (16, 64, 64, 3)
    assert len({tuple(img[32, 32]) for img in a}) > 4


def test_object_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="`shape`"):
        world.ObjectSpec("red", "blob")
    with pytest.raises(ValueError, match="`position`"):
        world.ObjectSpec("red", "circle", "top")
