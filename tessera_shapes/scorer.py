"""Judges a shapes-world image against the objects a prompt asks for, from its pixels alone.

Objects are found by colour segmentation against the (estimated) background, split into connected
components. Each component gets a colour (nearest named hue of its non-dark pixels), a pattern (share of
dark stripe pixels), a shape and a position (left, center or right third by box centre). Expected objects
are matched to components by how many traits agree; *leakage* is an object wearing the colour or shape of
another object in the same prompt.

A shape is named in two steps. Each shape's template is drawn into the component's bounding box and compared by
intersection-over-union (IoU); then the shapes are tried from the best-fitting template down, and the first
whose rule (:class:`tessera_shapes.shape_rules.ShapeRule`, with the measuring) the outline passes names it
(else it is ``"unknown"``). IoU alone cannot tell a square from a square with pinched sides, nor a circle from
a rounded diamond: at 64 px their IoUs overlap. The rules add what a person looks at: seen from its centre, a
circle's radius does not swing, a square's swings four times, a triangle's three and a star's five, and no
outline swings at an order its shape lacks (an oblong's twice, a pentagon's five times in a "circle"); a
square's sides do not bow in (solidity); a ring has a hole and nothing else does. The thresholds come from
:func:`tessera_shapes.calibration.calibrate`: true drawings, crisp and blurred like decoded generations,
against the near misses of :mod:`tessera_shapes.near_misses`.

Needs only numpy and Pillow. Images are ``PIL.Image.Image`` or uint8 arrays of shape ``(H, W, 3)``.
"""

from __future__ import annotations

import colorsys
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tessera_shapes import captioning, world
from tessera_shapes.shape_rules import ShapeEvidence, measure_shape, name_shape, neighbourhood

# Max per-channel difference from the background that makes a pixel foreground (0-255 scale).
FOREGROUND_THRESHOLD = 48
# Components smaller than this many pixels are noise, not objects.
MIN_AREA = 15
# Hue farther than this (degrees) from every named colour is "unknown"; so is saturation below the floor.
MAX_HUE_DISTANCE = 30.0
MIN_SATURATION = 0.25
# A pixel darker than this HSV value is a stripe, and a component with more than STRIPED_FRACTION of its inner
# pixels dark is striped. Measured (seed 5): striped objects 0.24-0.86 crisp, 0.19-0.73 blurred, 0.22-0.83 after
# the shipped VAE; solid ones 0.00 in all three and in 277 generated objects. The old rule (value < 0.35 and
# saturation < 0.45, more than 0.2) read blurred stripes as low as 0.11 and missed 15% of VAE-decoded ones.
DARK_VALUE = 0.45
STRIPED_FRACTION = 0.1

_HUES: dict[str, float] = {
    name: colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0] * 360 for name, rgb in world.COLOURS.items()
}


@dataclass(frozen=True)
class DetectedObject:
    """One connected foreground component and the traits read from it."""

    colour: str
    shape: str
    position: str
    pattern: str
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels
    rgb: tuple[int, int, int]  # median colour of its coloured pixels
    shape_iou: float  # IoU of the best-fitting template, whether or not its rule accepted the outline
    evidence: ShapeEvidence | None = None  # what the shape was judged on; shape_failures(shape, evidence) says why


@dataclass(frozen=True)
class ObjectVerdict:
    """How one expected object fared: which detected object stands for it and which traits are right."""

    expected: world.ObjectSpec
    found: DetectedObject | None
    colour_leak: bool
    shape_leak: bool

    @property
    def colour_ok(self) -> bool:
        if self.found is None:
            return False
        if self.expected.colour == world.ANY_COLOUR:
            return self.found.colour in world.COLOURS
        return self.found.colour == self.expected.colour

    @property
    def shape_ok(self) -> bool:
        return self.found is not None and self.found.shape == self.expected.shape

    @property
    def position_ok(self) -> bool:
        return self.found is not None and self.found.position == self.expected.position

    @property
    def pattern_ok(self) -> bool:
        return self.found is not None and self.found.pattern == self.expected.pattern

    @property
    def correct(self) -> bool:
        return self.colour_ok and self.shape_ok and self.position_ok and self.pattern_ok


@dataclass(frozen=True)
class ImageScore:
    """The verdict on one image: per expected object, plus objects nobody asked for."""

    objects: tuple[ObjectVerdict, ...]
    detected: tuple[DetectedObject, ...]
    extra_objects: int

    @property
    def correct(self) -> bool:
        """Every expected object right in colour, shape, position and pattern, and nothing else drawn."""
        return self.extra_objects == 0 and all(v.correct for v in self.objects)

    @property
    def leakage(self) -> bool:
        """Some object wears another expected object's colour or shape."""
        return any(v.colour_leak or v.shape_leak for v in self.objects)

    @property
    def position_swap(self) -> bool:
        """Both objects of a pair came out right in colour and shape but on each other's side."""
        if len(self.objects) != 2 or not all(v.colour_ok and v.shape_ok for v in self.objects):
            return False
        return all(
            v.found is not None and v.found.position == o.expected.position
            for v, o in zip(self.objects, self.objects[::-1], strict=True)
        )


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.asarray(image, dtype=np.uint8)


def _background(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float32)
    return np.asarray(np.median(border, axis=0), dtype=np.float32)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean ``(H, W)`` mask, as boolean masks, by min-label propagation.

    Every pixel starts labelled with its own index and repeatedly takes the smallest label around it; after each
    step it also takes its label's label (pointer jumping), so labels cross a component in a few passes rather than
    one pass per pixel of its diameter.
    """
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce(
            [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )
        # A label is always the index of a pixel of the same component, no larger than the pixel's own index.
        flat = np.append(np.where(mask, neighbours, big).ravel(), big)
        updated = flat[flat[flat]][:-1].reshape(h, w)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return [labels == value for value in np.unique(labels[mask])]


def _erode(mask: np.ndarray) -> np.ndarray:
    return neighbourhood(mask, np.logical_and)


def _name_colour(rgb: np.ndarray) -> str:
    hue, saturation, value = colorsys.rgb_to_hsv(*(float(v) / 255 for v in rgb))
    if saturation < MIN_SATURATION or value < 0.3:
        return "unknown"
    degrees = hue * 360
    distances = {name: min(abs(degrees - h), 360 - abs(degrees - h)) for name, h in _HUES.items()}
    name = min(distances, key=lambda n: distances[n])
    return name if distances[name] <= MAX_HUE_DISTANCE else "unknown"


def _position(box: tuple[int, int, int, int], width: int) -> str:
    centre = (box[0] + box[2]) / 2 / width
    if centre < 0.375:
        return "left"
    if centre > 0.625:
        return "right"
    return "center"


def detect_objects(
    image: Image.Image | np.ndarray, *, shapes: Sequence[str] = world.SCORED_SHAPES
) -> tuple[DetectedObject, ...]:
    """Finds the objects in ``image`` and reads their colour, shape, position and pattern.

    Args:
        image: an RGB image of the shapes world (any square size; 64x64 as drawn).
        shapes: the shapes a component may be called. The default leaves out the VAE-only extras: at 64 px a
            hexagon template fits a small circle about as well as the circle template does. Shapes without an
            entry in ``SHAPE_RULES`` are judged by ``DEFAULT_RULE``.

    Returns:
        detected objects, largest first.
    """
    pixels = _as_array(image)
    difference = np.abs(pixels.astype(np.float32) - _background(pixels)).max(axis=2)
    found = []
    for component in _components(difference > FOREGROUND_THRESHOLD):
        area = int(component.sum())
        if area < MIN_AREA:
            continue
        ys, xs = np.nonzero(component)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        inner = _erode(component)
        # Edge pixels mix object and background colours; judge colour and pattern by the inside if it exists.
        core = inner if inner.sum() >= MIN_AREA // 2 else component
        rgb = pixels[core].astype(np.float32)
        # Stripe pixels are dark (HSV value below DARK_VALUE). Every named colour has a value of 0.75 or more, so
        # a pixel darker than that is a stripe or a stripe blurred into the colour next to it.
        dark = rgb.max(axis=1) / 255 < DARK_VALUE
        coloured = rgb[~dark] if (~dark).sum() > 0 else rgb
        median = np.median(coloured, axis=0)
        evidence = measure_shape(component, box, difference, core, shapes)
        found.append(
            DetectedObject(
                colour=_name_colour(median),
                shape=name_shape(evidence, shapes),
                position=_position(box, pixels.shape[1]),
                pattern="striped" if dark.mean() > STRIPED_FRACTION else "solid",
                area=area,
                box=box,
                rgb=(int(median[0]), int(median[1]), int(median[2])),
                shape_iou=max((iou for _, iou in evidence.ious), default=0.0),
                evidence=evidence,
            )
        )
    return tuple(sorted(found, key=lambda o: -o.area))


def _agreement(spec: world.ObjectSpec, found: DetectedObject | None) -> tuple[int, int]:
    if found is None:
        return (0, 0)
    colour = found.colour in world.COLOURS if spec.colour == world.ANY_COLOUR else found.colour == spec.colour
    traits = colour + (found.shape == spec.shape) + (found.position == spec.position)
    return (traits + (found.pattern == spec.pattern), found.area)


def score_image(
    image: Image.Image | np.ndarray,
    expected: Sequence[world.ObjectSpec],
    *,
    shapes: Sequence[str] = world.SCORED_SHAPES,
) -> ImageScore:
    """Scores ``image`` against the objects it should show.

    Each expected object is paired with the detected object that agrees with it on the most traits (an
    object may go unmatched); unpaired detections count as extra objects.

    Args:
        image: the image to judge.
        expected: the objects asked for, e.g. ``captioning.parse_caption(prompt)``.
        shapes: passed to :func:`detect_objects`.
    """
    detected = detect_objects(image, shapes=shapes)
    options: list[DetectedObject | None] = [*detected, *([None] * len(expected))]
    best: tuple[DetectedObject | None, ...] = (None,) * len(expected)
    best_key = (-1, -1)
    for chosen in itertools.permutations(range(len(options)), len(expected)):
        picks = tuple(options[i] for i in chosen)
        keys = [_agreement(s, p) for s, p in zip(expected, picks, strict=True)]
        key = (sum(k[0] for k in keys), sum(k[1] for k in keys))
        if key > best_key:
            best, best_key = picks, key
    verdicts = []
    for spec, found in zip(expected, best, strict=True):
        others = [o for o in expected if o != spec]
        # A colour the prompt leaves open cannot leak, nor be leaked into.
        colour_leak = (
            found is not None
            and spec.colour != world.ANY_COLOUR
            and any(found.colour == o.colour != spec.colour for o in others)
        )
        shape_leak = found is not None and any(found.shape == o.shape != spec.shape for o in others)
        verdicts.append(ObjectVerdict(spec, found, colour_leak, shape_leak))
    matched = sum(f is not None for f in best)
    return ImageScore(tuple(verdicts), detected, len(detected) - matched)


def score_caption(image: Image.Image | np.ndarray, caption: str) -> ImageScore:
    """Scores ``image`` against a caption of the world, e.g. ``"a red circle on the left and ..."``."""
    return score_image(image, captioning.parse_caption(caption))
