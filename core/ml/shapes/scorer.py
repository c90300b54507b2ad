"""Judges a shapes-world image against the objects a prompt asks for, from its pixels alone.

Objects are found by colour segmentation against the (estimated) background, split into connected
components. Each component gets a colour (nearest named hue of its non-dark pixels), a pattern (share of
dark stripe pixels), a shape (best intersection-over-union with each shape's template drawn into the
component's bounding box) and a position (left, center or right third by box centre). Expected objects
are matched to components by how many traits agree; *leakage* is an object wearing the colour or shape of
another object in the same prompt.

Needs only numpy and Pillow. Images are ``PIL.Image.Image`` or uint8 arrays of shape ``(H, W, 3)``.
"""

from __future__ import annotations

import colorsys
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.ml.shapes import world

# Max per-channel difference from the background that makes a pixel foreground (0-255 scale).
FOREGROUND_THRESHOLD = 48
# Components smaller than this many pixels are noise, not objects.
MIN_AREA = 15
# A template is compared at this coverage: the foreground threshold keeps pixels about a third covered.
TEMPLATE_COVERAGE = 0.35
# Below this IoU with every template the shape is "unknown".
MIN_SHAPE_IOU = 0.55
# Hue farther than this (degrees) from every named colour is "unknown"; so is saturation below the floor.
MAX_HUE_DISTANCE = 30.0
MIN_SATURATION = 0.25
# A component with more than this share of dark, grey pixels is striped.
STRIPED_FRACTION = 0.2

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
    shape_iou: float


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
    """8-connected components of a boolean ``(H, W)`` mask, as boolean masks, by min-label propagation."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce(
            [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )
        updated = np.where(mask, neighbours, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    return [labels == value for value in np.unique(labels[mask])]


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    eroded: np.ndarray = np.logical_and.reduce(
        [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    return eroded


def _name_colour(rgb: np.ndarray) -> str:
    hue, saturation, value = colorsys.rgb_to_hsv(*(float(v) / 255 for v in rgb))
    if saturation < MIN_SATURATION or value < 0.3:
        return "unknown"
    degrees = hue * 360
    distances = {name: min(abs(degrees - h), 360 - abs(degrees - h)) for name, h in _HUES.items()}
    name = min(distances, key=lambda n: distances[n])
    return name if distances[name] <= MAX_HUE_DISTANCE else "unknown"


def _name_shape(component: np.ndarray, box: tuple[int, int, int, int], shapes: Sequence[str]) -> tuple[str, float]:
    x0, y0, x1, y1 = box
    crop = component[y0:y1, x0:x1]
    best, best_iou = "unknown", 0.0
    for shape in shapes:
        template = world.shape_coverage(shape, (x0, y0, x1, y1), component.shape[0])[y0:y1, x0:x1]
        filled = template >= TEMPLATE_COVERAGE
        iou = float(np.logical_and(filled, crop).sum() / max(1, np.logical_or(filled, crop).sum()))
        if iou > best_iou:
            best, best_iou = shape, iou
    return (best if best_iou >= MIN_SHAPE_IOU else "unknown"), best_iou


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
            hexagon template fits a small circle about as well as the circle template does.

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
        hsv = np.array([colorsys.rgb_to_hsv(*(p / 255)) for p in rgb])
        dark = (hsv[:, 2] < 0.35) & (hsv[:, 1] < 0.45)
        coloured = rgb[~dark] if (~dark).sum() > 0 else rgb
        median = np.median(coloured, axis=0)
        shape, iou = _name_shape(component, box, shapes)
        found.append(
            DetectedObject(
                colour=_name_colour(median),
                shape=shape,
                position=_position(box, pixels.shape[1]),
                pattern="striped" if dark.mean() > STRIPED_FRACTION else "solid",
                area=area,
                box=box,
                rgb=(int(median[0]), int(median[1]), int(median[2])),
                shape_iou=iou,
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
        expected: the objects asked for, e.g. ``world.parse_caption(prompt)``.
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
    return score_image(image, world.parse_caption(caption))
