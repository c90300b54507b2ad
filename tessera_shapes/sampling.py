"""Scenes of the shapes world: placing objects, sampling base-world and wide-world scenes, and drawing whole
datasets of them reproducibly from a seed."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from tessera_shapes.captioning import CaptionStyle, caption_for, describe
from tessera_shapes.drawing import PlacedObject, Scene, render_scene
from tessera_shapes.world import (
    ALL_SHAPES,
    BASE_COLOURS,
    BASE_OBJECTS,
    COLOURS,
    HELD_OUT_PAIRS,
    RESOLUTION,
    RGB,
    STRIPE_RGB,
    ObjectSpec,
)


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    values = np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _background(rng: np.random.Generator) -> RGB:
    grey = int(rng.integers(236, 251))
    return _jitter((grey, grey, grey - 3), rng, 3)


# Horizontal centres (in 64 px units) of a three-object row; its objects are smaller so that they never touch.
_ROW_X = {"left": 11.0, "center": 32.0, "right": 53.0}


def place_objects(specs: Sequence[ObjectSpec], rng: np.random.Generator, *, colour_jitter: int = 10) -> Scene:
    """Draws sizes and positions for ``specs`` and returns the scene with its canonical caption.

    A lone centred object is 22-30 px wide around the middle; an object at a side is 17-24 px wide in its half;
    in a row of three (left, center, right) each object is 14-18 px wide.
    """
    objects = []
    row = len(specs) == 3
    for spec in specs:
        if row:
            size = float(rng.uniform(14, 18))
            centre = (_ROW_X[spec.position] + float(rng.uniform(-2, 2)), 32 + float(rng.uniform(-6, 6)))
        elif spec.position == "center":
            size = float(rng.uniform(22, 30))
            centre = (32 + float(rng.uniform(-3, 3)), 32 + float(rng.uniform(-3, 3)))
        else:
            size = float(rng.uniform(17, 24))
            x = 16.0 if spec.position == "left" else 48.0
            centre = (x + float(rng.uniform(-3, 3)), 32 + float(rng.uniform(-6, 6)))
        scale = RESOLUTION / 64
        objects.append(
            PlacedObject(
                spec,
                _jitter(COLOURS[spec.colour], rng, colour_jitter),
                (centre[0] * scale, centre[1] * scale),
                size * scale,
            )
        )
    caption = (
        caption_for(specs)
        if len(specs) < 3
        else " and ".join(
            f"{s.noun_phrase} {'in the center' if s.position == 'center' else 'on the ' + s.position}" for s in specs
        )
    )
    return Scene(tuple(objects), _background(rng), caption, tuple(specs))


def _random_base_object(rng: np.random.Generator) -> ObjectSpec:
    return BASE_OBJECTS[int(rng.integers(len(BASE_OBJECTS)))]


def _has_held_out_pair(specs: Sequence[ObjectSpec]) -> bool:
    by_side = {s.position: s for s in specs}
    if "left" not in by_side or "right" not in by_side:
        return False
    return (by_side["left"].at("left"), by_side["right"].at("right")) in HELD_OUT_PAIRS


def sample_base_specs(rng: np.random.Generator, *, include_held_out_pairs: bool = False) -> tuple[ObjectSpec, ...]:
    """Objects for one base-world scene: 30% one centred object, 20% one at a side, 40% a left/right pair and
    10% a row of three (left, center, right). Held-out left/right pairs are redrawn unless included."""
    kind = rng.random()
    if kind < 0.3:
        return (_random_base_object(rng),)
    if kind < 0.5:
        return (_random_base_object(rng).at("left" if rng.random() < 0.5 else "right"),)
    positions = ("left", "right") if kind < 0.9 else ("left", "center", "right")
    while True:
        specs = tuple(_random_base_object(rng).at(p) for p in positions)
        if include_held_out_pairs or not _has_held_out_pair(specs):
            return specs


def sample_base_scene(rng: np.random.Generator, style: CaptionStyle = CaptionStyle()) -> Scene:
    """One base-world scene (held-out pairs excluded) with a varied caption from :func:`describe`."""
    specs = sample_base_specs(rng)
    scene = place_objects(specs, rng)
    return Scene(scene.objects, scene.background, describe(specs, rng, style), specs)


def _random_rgb(rng: np.random.Generator) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(0.45, 1.0)), float(rng.uniform(0.45, 1.0)))
    return (round(r * 255), round(g * 255), round(b * 255))


def sample_wide_scene(rng: np.random.Generator, *, striped_share: float = 0.2) -> Scene:
    """One scene of the VAE's wider world: 1-3 objects of any shape, random hues, stripes, any placement.

    Args:
        striped_share: the chance that an object is striped.
    """
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        shape = ALL_SHAPES[int(rng.integers(len(ALL_SHAPES)))]
        colour_name = BASE_COLOURS[int(rng.integers(len(BASE_COLOURS)))]
        rgb = _jitter(COLOURS[colour_name], rng, 10) if rng.random() < 0.3 else _random_rgb(rng)
        striped = rng.random() < striped_share
        stripe = _jitter(STRIPE_RGB, rng, 10) if rng.random() < 0.6 else _random_rgb(rng)
        size = float(rng.uniform(12, 32))
        centre = (float(rng.uniform(10, 54)), float(rng.uniform(10, 54)))
        spec = ObjectSpec(colour_name, shape, "center", "striped" if striped else "solid")
        objects.append(PlacedObject(spec, rgb, centre, size, stripe))
    background = _background(rng) if rng.random() < 0.8 else _jitter((225, 225, 225), rng, 25)
    return Scene(tuple(objects), background)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of a dataset drawn with ``seed``: any scene can be redrawn alone."""
    return np.random.default_rng([seed, index])


class BaseDataset(NamedTuple):
    """Base-world images with their captions and the objects each shows (to word them again)."""

    images: np.ndarray
    captions: list[str]
    specs: list[tuple[ObjectSpec, ...]]


def draw_base_dataset(n: int, seed: int) -> BaseDataset:
    """``n`` base-world images, captions and object specs, reproducible from ``seed``.

    Returns:
        uint8 images of shape ``(n, 64, 64, 3)``, their ``n`` captions and ``n`` tuples of object specs.
    """
    images = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    captions, specs = [], []
    for i in range(n):
        scene = sample_base_scene(scene_rng(seed, i))
        images[i] = np.asarray(render_scene(scene))
        captions.append(scene.caption)
        specs.append(scene.specs)
    return BaseDataset(images, captions, specs)


def draw_wide_dataset(n: int, seed: int) -> np.ndarray:
    """``n`` wide-world images (uncaptioned), reproducible from ``seed``; uint8, shape ``(n, 64, 64, 3)``."""
    images = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    for i in range(n):
        images[i] = np.asarray(render_scene(sample_wide_scene(scene_rng(seed, i))))
    return images
