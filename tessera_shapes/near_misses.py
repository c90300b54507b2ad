"""Near misses: seeded drawings that a person would *not* accept as the shape they pretend to be.

The scorer was only ever shown true drawings; these show it what it must refuse. Each kind draws a shape that
a lenient template scorer takes for one of the scored shapes (its ``pretends``): a square with pinched sides, a
rounded diamond or a pentagon for a circle, a star for a triangle, a disc for a ring. Near misses are placed like
the world's own objects (a lone centred object 22-30 px, an object at a side 17-24 px, any named colour, solid or
striped) so that only the outline differs from a true drawing.

Generated images are blurrier than the world's crisp drawings (an 8x downsampling VAE decodes them), so
:func:`soften` blurs an image the way a decode does; :func:`near_miss_corpus` and :func:`ground_truth_corpus`
return every drawing crisp and softened, and a threshold is never tuned on crisp pixels alone.

Needs only numpy and Pillow, like the world's :mod:`tessera_shapes.drawing` and :mod:`tessera_shapes.sampling`,
whose outlines and placement it reuses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tessera_shapes import drawing, sampling, world
from tessera_shapes.drawing import _draw_mask, _regular

Box = tuple[float, float, float, float]
Points = list[tuple[float, float]]

# The kind of a true drawing in a corpus, next to the near-miss kinds.
GROUND_TRUTH = "ground_truth"


@dataclass(frozen=True)
class NearMissKind:
    """One way of drawing the wrong shape.

    Args:
        name: the kind's name, e.g. ``"pinched_square"``.
        pretends: the scored shape a lenient scorer would wrongly accept it as.
        description: what is drawn, in words.
    """

    name: str
    pretends: str
    description: str


KINDS: tuple[NearMissKind, ...] = (
    NearMissKind("pinched_square", "square", "a square whose four sides bow inwards by 8-20% of the side"),
    NearMissKind("bitten_square", "square", "a square with a round bite (30-45% of the side) out of a corner or side"),
    NearMissKind("oblong", "square", "a rectangle 1.5-1.9 times as long as it is high, either way round"),
    NearMissKind("rounded_diamond", "circle", "a diamond with rounded sides, |x|^p + |y|^p = 1 with p in 1.1-1.5"),
    NearMissKind("pentagon", "circle", "a regular pentagon at any rotation"),
    NearMissKind("blob", "circle", "an irregular closed curve whose radius varies by 30-50%"),
    NearMissKind("ellipse", "circle", "an ellipse 1.5-1.9 times as long as it is high, either way round"),
    NearMissKind(
        "star_for_triangle", "triangle", "a five-pointed star, sharp or fat (inner radius 0.38-0.75), for a triangle"
    ),
    NearMissKind("trapezoid", "triangle", "a triangle with its top 35-50% cut off"),
    NearMissKind("triangle_for_star", "star", "a triangle where a star was asked"),
    NearMissKind(
        "blunt_star", "star", "a star so blunt (inner radius 0.77-0.81; a pentagon's is 0.81) it reads as a pentagon"
    ),
    NearMissKind("filled_ring", "ring", "a ring whose hole is filled or nearly closed (0-20% of its diameter)"),
)
KIND_NAMES: tuple[str, ...] = tuple(kind.name for kind in KINDS)


def kind(name: str) -> NearMissKind:
    """The near-miss kind called ``name``.

    Raises:
        KeyError: naming the known kinds if ``name`` is not one of them.
    """
    for item in KINDS:
        if item.name == name:
            return item
    raise KeyError(f"unknown near-miss kind {name!r}; known: {list(KIND_NAMES)}")


# Outlines: each returns points in the unit box (x right, y down), like world's polygons; a few kinds also carve
# the mask afterwards (see _CARVINGS).


def _pinched_square(rng: np.random.Generator) -> Points:
    depth = float(rng.uniform(0.08, 0.2))
    # A sine profile bows the middle of a side; a parabola spreads the dent towards the corners.
    profile = (lambda t: math.sin(math.pi * t)) if rng.random() < 0.5 else (lambda t: 4 * t * (1 - t))
    corners = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    points = []
    for (ax, ay), (bx, by) in itertools.pairwise((*corners, corners[0])):
        # The inward normal of a clockwise side (y down) is the side's direction turned right.
        nx, ny = -(by - ay), bx - ax
        for step in range(16):
            t = step / 16
            d = depth * profile(t)
            points.append((ax + t * (bx - ax) + d * nx, ay + t * (by - ay) + d * ny))
    return points


def _superellipse(p: float, n: int = 64) -> Points:
    # |x|^p + |y|^p = 1: p = 2 is a circle, p = 1 a diamond standing on a corner.
    points = []
    for k in range(n):
        angle = 2 * math.pi * k / n
        c, s = math.cos(angle), math.sin(angle)
        x = math.copysign(abs(c) ** (2 / p), c)
        y = math.copysign(abs(s) ** (2 / p), s)
        points.append(((x + 1) / 2, (y + 1) / 2))
    return points


def _rounded_diamond(rng: np.random.Generator) -> Points:
    return _superellipse(float(rng.uniform(1.1, 1.5)))


def _fit_uniformly(points: Sequence[tuple[float, float]]) -> Points:
    # Into the unit box at one scale for both axes, centred: stretching to the box would round a blob out.
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return [(0.5 + (x - cx) / span, 0.5 + (y - cy) / span) for x, y in points]


def _pentagon(rng: np.random.Generator) -> Points:
    turn = float(rng.uniform(0, 2 * math.pi / 5))
    return _fit_uniformly(
        [(math.cos(turn + 2 * math.pi * k / 5), math.sin(turn + 2 * math.pi * k / 5)) for k in range(5)]
    )


def _blob(rng: np.random.Generator) -> Points:
    # Low harmonics (2-4 bumps) with random phases, rescaled until the radius varies by the drawn amount.
    amplitudes = rng.uniform(0.3, 1.0, size=3)
    phases = rng.uniform(0, 2 * math.pi, size=3)
    angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    wobble = sum(a * np.cos((k + 2) * angles + p) for k, (a, p) in enumerate(zip(amplitudes, phases, strict=True)))
    wobble = wobble / (wobble.max() - wobble.min()) * float(rng.uniform(0.3, 0.5))
    radius = 1 + wobble - wobble.mean()
    points = [(float(r * math.cos(a)), float(r * math.sin(a))) for r, a in zip(radius, angles, strict=True)]
    return _fit_uniformly(points)


def _star(rng: np.random.Generator, low: float, high: float) -> Points:
    return list(_regular(5, inner=float(rng.uniform(low, high))))


def _trapezoid(rng: np.random.Generator) -> Points:
    cut = float(rng.uniform(0.35, 0.5))  # share of the height removed from the top
    # The triangle's sides are kept: at height `cut` below the apex they are `cut` of the base apart.
    return [(0.5 - cut / 2, 0.0), (0.5 + cut / 2, 0.0), (1.0, 1.0), (0.0, 1.0)]


_OUTLINES: dict[str, Callable[[np.random.Generator], Points]] = {
    "pinched_square": _pinched_square,
    "rounded_diamond": _rounded_diamond,
    "pentagon": _pentagon,
    "blob": _blob,
    "star_for_triangle": lambda rng: _star(rng, 0.38, 0.75),
    "trapezoid": _trapezoid,
    # A fat star (inner radius up to about 0.7) still reads as a star, and true stars decoded by the VAE measure
    # like one; only near a pentagon's proportions does it stop being one.
    "blunt_star": lambda rng: _star(rng, 0.77, 0.81),
}
# Kinds that start from one of the world's own shapes, drawn by the world (and then stretched or carved).
_WORLD_SHAPES: dict[str, str] = {
    "bitten_square": "square",
    "oblong": "square",
    "ellipse": "circle",
    "triangle_for_star": "triangle",
    "filled_ring": "circle",
}


def _bite(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    radius = float(rng.uniform(0.3, 0.45)) * (x1 - x0)
    # A corner or the middle of a side; the bite's centre sits on the outline so it takes a visible mouthful.
    u, v = [(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)][int(rng.integers(8))]
    cx, cy = x0 + u * (x1 - x0), y0 + v * (y1 - y0)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=0)


def _pinhole(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    # A ring's hole is half its diameter; here it is closed up to at most a fifth (or entirely).
    share = float(rng.uniform(0.0, 0.2)) if rng.random() < 0.7 else 0.0
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * (1 - share) / 2, (y1 - y0) * (1 - share) / 2
    if share > 0:
        draw.ellipse((x0 + mx, y0 + my, x1 - mx, y1 - my), fill=0)


_CARVINGS: dict[str, Callable[[ImageDraw.ImageDraw, Box, np.random.Generator], None]] = {
    "bitten_square": _bite,
    "filled_ring": _pinhole,
}


def _box(name: str, placed: drawing.PlacedObject, rng: np.random.Generator) -> Box:
    """Where the near miss is drawn: the box of the shape it pretends to be, stretched for the oblong kinds."""
    box = placed.box
    if name not in ("oblong", "ellipse"):
        return box
    # Keep the area of the pretended shape's box and stretch it along a random axis.
    stretch = math.sqrt(float(rng.uniform(1.5, 1.9)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w, half_h = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    if rng.random() < 0.5:
        half_w, half_h = half_w * stretch, half_h / stretch
    else:
        half_w, half_h = half_w / stretch, half_h * stretch
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def _mask(name: str, box: Box, rng: np.random.Generator, resolution: int) -> Image.Image:
    """An ``L`` mask at ``resolution * world.SUPERSAMPLE`` with the near miss filling ``box`` (output pixels)."""
    x0, y0, x1, y1 = (v * world.SUPERSAMPLE for v in box)
    if name in _WORLD_SHAPES:
        mask = _draw_mask(_WORLD_SHAPES[name], box, resolution)
        draw = ImageDraw.Draw(mask)
    else:
        big = resolution * world.SUPERSAMPLE
        mask = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(mask)
        draw.polygon([(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in _OUTLINES[name](rng)], fill=255)
    carve = _CARVINGS.get(name)
    if carve is not None:
        carve(draw, (x0, y0, x1, y1), rng)
    return mask


def _paint(
    masks: Sequence[tuple[Image.Image, drawing.PlacedObject, Box]], background: world.RGB, resolution: int
) -> np.ndarray:
    """Fills each mask with its object's colour (and stripes) over ``background``, as ``drawing.render_scene`` does."""
    big = resolution * world.SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    for mask, obj, box in masks:
        # Stripes counted from the drawn box's top edge, the world's rule.
        canvas = Image.composite(drawing.fill_image(obj, box[1], big), canvas, mask)
    return np.asarray(canvas.resize((resolution, resolution), Image.Resampling.BOX))


def draw_near_miss(name: str, spec: world.ObjectSpec, rng: np.random.Generator) -> np.ndarray:
    """Draws near-miss kind ``name`` where ``spec`` (a shape the kind pretends to be) was asked for.

    Colour, size, position and background are drawn exactly as :func:`sampling.place_objects` draws them for
    ``spec``; only the outline is wrong.

    Returns:
        a uint8 image of shape ``(64, 64, 3)``.

    Raises:
        ValueError: if ``spec.shape`` is not the shape the kind pretends to be.
    """
    pretends = kind(name).pretends
    if spec.shape != pretends:
        raise ValueError(f"near miss {name!r} pretends to be a {pretends}, but `spec` asks for a {spec.shape}.")
    scene = sampling.place_objects((spec,), rng)
    (placed,) = scene.objects
    box = _box(name, placed, rng)
    mask = _mask(name, box, rng, world.RESOLUTION)
    return _paint([(mask, placed, box)], scene.background, world.RESOLUTION)


def soften(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blurs ``image`` about as much as decoding it from the shapes VAE's 8x8 latents does.

    Half the time a Gaussian blur (radius 0.6-1.4 px), half the time a downsample to 20-36 px and back (bilinear
    down, bicubic up), which also leaves the faint ringing a decoder adds at edges. Measured on 300 true drawings:
    the shipped VAE's round trip is 28.7 dB PSNR from the drawing, a Gaussian of radius 0.9 px 30.3 dB and of
    1.3 px 27.0 dB, a round trip through 32 px 28.6 dB and through 20 px 25.6 dB. On fine detail the VAE is harsher
    than its PSNR says: it fills a small star's notches about as much as a round trip through 16 px does, beyond
    this blur, and it bends straight sides a little, which no blur does.
    """
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    size = picture.size
    if rng.random() < 0.5:
        picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.4))))
    else:
        side = int(rng.integers(20, 37))
        picture = picture.resize((side, side), Image.Resampling.BILINEAR).resize(size, Image.Resampling.BICUBIC)
    return np.asarray(picture)


@dataclass(frozen=True)
class Drawing:
    """One image of a calibration corpus and the objects it is judged against.

    Args:
        image: uint8, shape ``(64, 64, 3)``.
        expected: the objects asked for; for a near miss, the object it pretends to be.
        kind: ``GROUND_TRUTH`` or the near-miss kind's name.
        softened: whether :func:`soften` blurred the image.
    """

    image: np.ndarray
    expected: tuple[world.ObjectSpec, ...]
    kind: str
    softened: bool


def _both(
    image: np.ndarray, expected: tuple[world.ObjectSpec, ...], name: str, rng: np.random.Generator
) -> list[Drawing]:
    return [Drawing(image, expected, name, False), Drawing(soften(image, rng), expected, name, True)]


def near_miss_corpus(seed: int, per_kind: int, *, kinds: Sequence[str] = KIND_NAMES) -> list[Drawing]:
    """``per_kind`` near misses of each kind, each crisp and softened (``2 * per_kind`` drawings a kind).

    Colours, positions and patterns cycle so that a kind's first 36 drawings cover every named colour at every
    position, solid and striped.
    """
    combos = list(itertools.product(world.POSITIONS, world.PATTERNS, world.COLOURS))
    # Stepping 7 combinations at a time (7 and 36 share no factor) visits all 36 and changes the position, the
    # pattern and the colour from one drawing to the next, so a short corpus is still mixed.
    drawings = []
    for name in kinds:
        pretends = kind(name).pretends
        for i in range(per_kind):
            position, pattern, colour = combos[(i * 7) % len(combos)]
            rng = np.random.default_rng([seed, KIND_NAMES.index(name), i])
            spec = world.ObjectSpec(colour, pretends, position, pattern)
            drawings += _both(draw_near_miss(name, spec, rng), (spec,), name, rng)
    return drawings


def ground_truth_corpus(seed: int, pairs: int) -> list[Drawing]:
    """True drawings, each crisp and softened: every colour x scored shape x pattern x position, plus ``pairs``
    random left/right pairs (a quarter of their objects striped).
    """
    rng = np.random.default_rng(seed)
    scenes = [
        sampling.place_objects((world.ObjectSpec(colour, shape, position, pattern),), rng)
        for colour, shape, pattern, position in itertools.product(
            world.COLOURS, world.SCORED_SHAPES, world.PATTERNS, world.POSITIONS
        )
    ]
    colours, shapes = list(world.COLOURS), world.SCORED_SHAPES
    for _ in range(pairs):
        pair = tuple(
            world.ObjectSpec(
                colours[int(rng.integers(len(colours)))],
                shapes[int(rng.integers(len(shapes)))],
                side,
                world.PATTERNS[int(rng.random() < 0.25)],
            )
            for side in ("left", "right")
        )
        scenes.append(sampling.place_objects(pair, rng))
    drawings = []
    for scene in scenes:
        drawings += _both(np.asarray(drawing.render_scene(scene)), scene.specs, GROUND_TRUTH, rng)
    return drawings
