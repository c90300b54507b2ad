"""Drawing the shapes world: each shape's outline and drawn proportions, the placed objects of a scene and
the anti-aliased rendering of a scene into a 64x64 RGB image (numpy and Pillow only)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from tessera_shapes.world import RESOLUTION, RGB, STRIPE_RGB, STRIPE_WIDTH, SUPERSAMPLE, ObjectSpec


@dataclass(frozen=True)
class _Geometry:
    aspect: float  # height / width of the drawn bounding box
    scale: float  # drawn width relative to the sampled object size, to even out visual areas


_GEOMETRY: dict[str, _Geometry] = {
    "circle": _Geometry(1.0, 1.0),
    "square": _Geometry(1.0, 0.88),
    "triangle": _Geometry(0.87, 1.08),
    "star": _Geometry(0.95, 1.15),
    "ring": _Geometry(1.0, 1.05),
    "pentagon": _Geometry(0.95, 1.0),
    "hexagon": _Geometry(1.0, 1.0),
    "diamond": _Geometry(1.0, 1.1),
    "cross": _Geometry(1.0, 1.0),
}
RING_HOLE = 0.5  # inner diameter / outer diameter


def _normalised(points: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / w, (y - y0) / h) for x, y in points)


def _regular(n: int, inner: float | None = None) -> tuple[tuple[float, float], ...]:
    # Pointing up; with ``inner`` it is an n-pointed star with that inner/outer radius ratio.
    steps = 2 * n if inner is not None else n
    points = []
    for k in range(steps):
        r = inner if inner is not None and k % 2 else 1.0
        angle = -math.pi / 2 + 2 * math.pi * k / steps
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return _normalised(points)


# Outlines in the unit box (x right, y down); circle and ring are ellipses and have none.
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "square": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "star": _regular(5, inner=0.42),
    "pentagon": _regular(5),
    "hexagon": _normalised([(math.cos(math.pi / 3 * k), math.sin(math.pi / 3 * k)) for k in range(6)]),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "cross": _normalised(
        [(1, 0), (2, 0), (2, 1), (3, 1), (3, 2), (2, 2), (2, 3), (1, 3), (1, 2), (0, 2), (0, 1), (1, 1)]
    ),
}


def shape_box(shape: str, centre: tuple[float, float], size: float) -> tuple[float, float, float, float]:
    """The ``(x0, y0, x1, y1)`` pixel box a shape of nominal ``size`` occupies around ``centre``."""
    geometry = _GEOMETRY[shape]
    w = size * geometry.scale
    h = w * geometry.aspect
    return (centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2)


def _draw_mask(shape: str, box: tuple[float, float, float, float], resolution: int) -> Image.Image:
    """An ``L`` mask at ``resolution * SUPERSAMPLE`` with the shape filling ``box`` (output pixel units)."""
    big = resolution * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = (v * SUPERSAMPLE for v in box)
    if shape in ("circle", "ring"):
        draw.ellipse((x0, y0, x1, y1), fill=255)
        if shape == "ring":
            mx, my = (x1 - x0) * (1 - RING_HOLE) / 2, (y1 - y0) * (1 - RING_HOLE) / 2
            draw.ellipse((x0 + mx, y0 + my, x1 - mx, y1 - my), fill=0)
    else:
        points = [(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in _POLYGONS[shape]]
        draw.polygon(points, fill=255)
    return mask


def shape_coverage(shape: str, box: tuple[float, float, float, float], resolution: int = RESOLUTION) -> np.ndarray:
    """How much of each pixel a shape filling ``box`` covers.

    Returns:
        float32 array of shape ``(resolution, resolution)`` in [0, 1].
    """
    mask = _draw_mask(shape, box, resolution).resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class PlacedObject:
    """An object as drawn: what the caption says plus its exact colour and geometry."""

    spec: ObjectSpec
    rgb: RGB
    centre: tuple[float, float]
    size: float
    stripe_rgb: RGB = STRIPE_RGB

    @property
    def box(self) -> tuple[float, float, float, float]:
        return shape_box(self.spec.shape, self.centre, self.size)


@dataclass(frozen=True)
class Scene:
    """A drawable scene and its caption (empty for wide-world scenes, which are never captioned)."""

    objects: tuple[PlacedObject, ...]
    background: RGB
    caption: str = ""
    specs: tuple[ObjectSpec, ...] = field(default=())


def render_scene(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """Draws ``scene`` as an anti-aliased RGB image of ``resolution`` x ``resolution`` pixels."""
    big = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), scene.background)
    for obj in scene.objects:
        mask = _draw_mask(obj.spec.shape, obj.box, resolution)
        canvas = Image.composite(fill_image(obj, obj.box[1], big), canvas, mask)
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def fill_image(obj: PlacedObject, top: float, side: int) -> Image.Image:
    """The paint of ``obj`` over a whole ``side`` x ``side`` supersampled canvas: its colour, or its stripes with
    bands counted from ``top`` (output pixels; the object's top edge), so a striped object starts with its colour."""
    if obj.spec.pattern != "striped":
        return Image.new("RGB", (side, side), obj.rgb)
    rows = (np.arange(side) - int(top * SUPERSAMPLE)) // (STRIPE_WIDTH * SUPERSAMPLE) % 2
    fill = np.where(rows[:, None, None] == 0, np.array(obj.rgb), np.array(obj.stripe_rgb))
    return Image.fromarray(np.broadcast_to(fill, (side, side, 3)).astype(np.uint8), "RGB")
