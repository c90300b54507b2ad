"""Judges a shapes-world image against the objects a prompt asks for, from its pixels alone.

Objects are found by colour segmentation against the (estimated) background, split into connected
components. Each component gets a colour (nearest named hue of its non-dark pixels), a pattern (share of
dark stripe pixels), a shape and a position (left, center or right third by box centre). Expected objects
are matched to components by how many traits agree; *leakage* is an object wearing the colour or shape of
another object in the same prompt.

A shape is named in two steps. Each shape's template is drawn into the component's bounding box and
compared by intersection-over-union (IoU); then the shapes are tried from the best-fitting template down,
and the first whose :class:`ShapeRule` the outline passes names it (else it is ``"unknown"``). IoU alone
cannot tell a square from a square with pinched sides, nor a circle from a rounded diamond: at 64 px their
IoUs overlap. The rules add what a person looks at: seen from its centre, a circle's radius does not swing,
a square's swings four times, a triangle's three and a star's five, and no outline swings at an order its
shape lacks (an oblong's twice, a pentagon's five times in a "circle"); a square's sides do not bow in
(solidity); a ring has a hole and nothing else does. The thresholds come from
:func:`tessera_shapes.calibration.calibrate`: true drawings, crisp and blurred like decoded generations,
against the near misses of :mod:`tessera_shapes.near_misses`.

Needs only numpy and Pillow. Images are ``PIL.Image.Image`` or uint8 arrays of shape ``(H, W, 3)``.
"""

from __future__ import annotations

import colorsys
import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tessera_shapes import captioning, drawing, world

# Max per-channel difference from the background that makes a pixel foreground (0-255 scale).
FOREGROUND_THRESHOLD = 48
# Components smaller than this many pixels are noise, not objects.
MIN_AREA = 15
# A template is compared at this coverage: the foreground threshold keeps pixels about a third covered.
TEMPLATE_COVERAGE = 0.35
# The IoU floor of a shape without a rule of its own (the VAE-only extras). It was the only shape test before the
# near-miss calibration: at 0.55 it accepted 190 of 216 pinched squares and every bitten square, oblong, rounded
# diamond, pentagon and ellipse (see tessera_shapes.calibration).
MIN_SHAPE_IOU = 0.55
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


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), pixels

# A ring encloses a hole of at least this share of its filled area (hole + ring); no other shape does. Measured
# (seeds 5-7): true rings 0.09-0.25, rings whose hole is filled or nearly closed 0-0.033 (see SHAPE_RULES).
HOLE_SHARE = 0.047
# The swings of the outline's radius are measured at these symmetry orders: 2 (ellipse, oblong) to 6 (hexagon).
SWING_ORDERS = range(2, 7)


@dataclass(frozen=True)
class ShapeRule:
    """What a component's outline must measure to be called one shape; ``None`` leaves a measure unchecked.

    The outline's radius, seen from its centre, swings as it goes round: a square's four times (order 4), a
    triangle's three times, a star's five times, a circle's not at all. A swing at an order the shape does not
    have (an oblong's 2, a bite's 2 and 3, a pentagon's 5 in a circle) is what a person sees as "not that shape".

    Args:
        min_iou: least IoU with the shape's template drawn into the component's bounding box.
        order: the shape's rotational symmetry; swings at its multiples are its own. ``None`` for round shapes.
        max_asymmetry: most the radius may swing at the other orders in ``SWING_ORDERS`` (root sum of squares, as
            a share of the mean radius).
        min_swing: least the radius must swing at ``order`` itself (a star's points against its notches).
        min_solidity: least area / convex-hull area (1 for a convex outline; dents in the sides lower it).
        hole: whether the outline encloses a hole of at least ``HOLE_SHARE`` of its filled area.
    """

    min_iou: float
    order: int | None = None
    max_asymmetry: float | None = None
    min_swing: float | None = None
    min_solidity: float | None = None
    hole: bool = False


# Each threshold is tessera_shapes.calibration.calibrate()'s (seeds 5-7, 36 near misses of each kind and 120 pairs
# per seed, every drawing crisp and blurred), rounded: in the gap between the worst true drawing and the nearest
# near miss the measure is meant to refuse, a quarter of the way from the near miss. An IoU floor refuses no near
# miss (IoU cannot tell them apart) and sits 0.1 below the worst true drawing. That module's docstring has the
# measured ranges; python -m tessera_shapes.calibration measures them again.
SHAPE_RULES: dict[str, ShapeRule] = {
    "circle": ShapeRule(min_iou=0.76, max_asymmetry=0.038),
    "square": ShapeRule(min_iou=0.80, order=4, max_asymmetry=0.085, min_solidity=0.937),
    "triangle": ShapeRule(min_iou=0.60, order=3, min_swing=0.21),
    "star": ShapeRule(min_iou=0.44, order=5, max_asymmetry=0.19, min_swing=0.12),
    "ring": ShapeRule(min_iou=0.62, hole=True),
}
# Shapes without a rule of their own (the VAE-only extras) need only the old IoU floor and no hole.
DEFAULT_RULE = ShapeRule(min_iou=MIN_SHAPE_IOU)


@dataclass(frozen=True)
class ShapeEvidence:
    """What the scorer measured on one component's outline (see :class:`ShapeRule` for each measure).

    Args:
        ious: ``(shape, IoU)`` for each shape the component was compared with.
        swings: the radius's swing at orders 1-6 (index 0 is order 1), as a share of the mean radius.
        solidity: area / convex-hull area.
        hole: hole area / (area + hole area).
    """

    ious: tuple[tuple[str, float], ...]
    swings: tuple[float, ...]
    solidity: float
    hole: float

    def iou(self, shape: str) -> float:
        """The IoU with ``shape``'s template."""
        return dict(self.ious)[shape]

    def swing(self, order: int) -> float:
        """The radius's swing at symmetry ``order`` (1-6)."""
        return self.swings[order - 1]

    def asymmetry(self, order: int | None) -> float:
        """The radius's swing at the orders of ``SWING_ORDERS`` that a shape of symmetry ``order`` lacks."""
        return math.sqrt(sum(self.swing(k) ** 2 for k in SWING_ORDERS if order is None or k % order))


def shape_failures(shape: str, evidence: ShapeEvidence) -> list[str]:
    """Why ``evidence`` does not show a ``shape``, one line per failed test of its rule; empty if it does."""
    rule = SHAPE_RULES.get(shape, DEFAULT_RULE)
    failures = []
    if evidence.iou(shape) < rule.min_iou:
        failures.append(f"IoU {evidence.iou(shape):.3f} < {rule.min_iou}")
    if rule.max_asymmetry is not None and evidence.asymmetry(rule.order) > rule.max_asymmetry:
        failures.append(f"asymmetry {evidence.asymmetry(rule.order):.3f} > {rule.max_asymmetry}")
    if rule.min_swing is not None and rule.order is not None and evidence.swing(rule.order) < rule.min_swing:
        failures.append(f"{rule.order}-fold swing {evidence.swing(rule.order):.3f} < {rule.min_swing}")
    if rule.min_solidity is not None and evidence.solidity < rule.min_solidity:
        failures.append(f"solidity {evidence.solidity:.3f} < {rule.min_solidity}")
    if (evidence.hole >= HOLE_SHARE) != rule.hole:
        failures.append(f"hole {evidence.hole:.3f} {'<' if rule.hole else '>='} {HOLE_SHARE}")
    return failures


@functools.lru_cache(maxsize=8192)
def _template(shape: str, box: Box, resolution: int) -> np.ndarray:
    # Evaluation scores thousands of images whose boxes repeat; drawing a template is most of a shape's cost.
    x0, y0, x1, y1 = box
    filled: np.ndarray = drawing.shape_coverage(shape, box, resolution)[y0:y1, x0:x1] >= TEMPLATE_COVERAGE
    filled.setflags(write=False)
    return filled


def _hull_area(points: list[tuple[int, int]]) -> float:
    """Area of the convex hull of ``points`` (Andrew's monotone chain, then the shoelace formula)."""

    def turn(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    ordered = sorted(set(points))
    chains: list[list[tuple[int, int]]] = [[], []]
    for chain, sequence in zip(chains, (ordered, ordered[::-1]), strict=True):
        for p in sequence:
            while len(chain) >= 2 and turn(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
    hull = chains[0][:-1] + chains[1][:-1]
    return 0.5 * abs(sum(hull[i][0] * hull[i - 1][1] - hull[i - 1][0] * hull[i][1] for i in range(len(hull))))


def _solidity(crop: np.ndarray) -> float:
    # The hull of the pixel squares needs only each row's outermost pixels: two corners at each end of a row.
    rows = np.flatnonzero(crop.any(axis=1))
    left = crop.argmax(axis=1)
    right = crop.shape[1] - crop[:, ::-1].argmax(axis=1)
    points = [(int(x), int(y + dy)) for y in rows for x in (left[y], right[y]) for dy in (0, 1)]
    return float(crop.sum()) / max(1.0, _hull_area(points))


def _hole_share(crop: np.ndarray) -> float:
    # Background 4-connected to the box's border is outside; any other background pixel is a hole. (The component
    # is 8-connected, so background must be 4-connected for the two to tile the plane without crossing.)
    free = ~np.pad(crop, 1)
    outside = np.zeros_like(free)
    outside[0], outside[-1], outside[:, 0], outside[:, -1] = True, True, True, True
    while True:
        grown = outside.copy()
        grown[1:] |= outside[:-1]
        grown[:-1] |= outside[1:]
        grown[:, 1:] |= outside[:, :-1]
        grown[:, :-1] |= outside[:, 1:]
        grown &= free
        if np.array_equal(grown, outside):
            break
        outside = grown
    holes = int((free & ~outside).sum())
    return holes / (int(crop.sum()) + holes)


# The radial profile: this many rays from the outline's centre, sampled every half pixel.
_RAYS = 64
_RAY_STEP = 0.5


def _radial_swings(coverage: np.ndarray) -> np.ndarray:
    """How the outline's radius swings around its centre, by symmetry order (index k: k-fold).

    The radius along each ray is the summed coverage (0-1) along it, so anti-aliased and blurred edges give a
    sub-pixel radius. Returns the amplitude of each Fourier harmonic of the radius over the rays, as a share of the
    mean radius: a radius ``r0 * (1 + a * cos(k * angle))`` gives ``a`` at index k.
    """
    h, w = coverage.shape
    total = float(coverage.sum())
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = float((coverage * ys).sum()) / total, float((coverage * xs).sum()) / total
    angles = np.linspace(0, 2 * math.pi, _RAYS, endpoint=False)
    steps = np.arange(_RAY_STEP / 2, math.hypot(h, w), _RAY_STEP)
    px = cx + np.cos(angles)[:, None] * steps[None, :]
    py = cy + np.sin(angles)[:, None] * steps[None, :]
    # Bilinear sampling with zeros outside the crop.
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    padded = np.pad(coverage, 1)

    def at(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        sampled: np.ndarray = padded[np.clip(y + 1, 0, h + 1), np.clip(x + 1, 0, w + 1)]
        return sampled

    values = (
        at(y0, x0) * (1 - fx) * (1 - fy)
        + at(y0, x0 + 1) * fx * (1 - fy)
        + at(y0 + 1, x0) * (1 - fx) * fy
        + at(y0 + 1, x0 + 1) * fx * fy
    )
    spectrum = np.abs(np.fft.rfft(values.sum(axis=1) * _RAY_STEP))
    harmonics: np.ndarray = 2 * spectrum / max(float(spectrum[0]), 1e-9)
    return harmonics


def _dilate(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    dilated: np.ndarray = np.logical_or.reduce(
        [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    return dilated


def _shape_evidence(
    component: np.ndarray, box: Box, difference: np.ndarray, core: np.ndarray, shapes: Sequence[str]
) -> ShapeEvidence:
    """Measures ``component`` (boxed by ``box``) against each of ``shapes``.

    Args:
        difference: every pixel's max per-channel difference from the background.
        core: the component's inner pixels, whose difference stands for full coverage.
    """
    x0, y0, x1, y1 = box
    crop = component[y0:y1, x0:x1]
    ious = []
    for shape in shapes:
        template = _template(shape, box, component.shape[0])
        ious.append((shape, float(np.logical_and(template, crop).sum() / max(1, np.logical_or(template, crop).sum()))))
    # Coverage of the component and its 2 px fringe (pixels too faint to be foreground still carry the edge). The
    # 20th percentile of the core stands for full coverage, so a stripe's slightly smaller contrast counts as full.
    h, w = component.shape
    fy0, fx0, fy1, fx1 = max(0, y0 - 2), max(0, x0 - 2), min(h, y1 + 2), min(w, x1 + 2)
    fringe = _dilate(_dilate(component[fy0:fy1, fx0:fx1]))
    full = max(float(np.percentile(difference[core], 20)), 1.0)
    coverage = np.where(fringe, np.clip(difference[fy0:fy1, fx0:fx1] / full, 0.0, 1.0), 0.0)
    return ShapeEvidence(
        ious=tuple(ious),
        swings=tuple(float(v) for v in _radial_swings(coverage)[1:7]),
        solidity=_solidity(crop),
        hole=_hole_share(crop),
    )


def _name_shape(evidence: ShapeEvidence, shapes: Sequence[str]) -> str:
    """The best-fitting template whose rule the outline passes; ``"unknown"`` if none does."""
    for shape in sorted(shapes, key=lambda s: -evidence.iou(s)):
        if not shape_failures(shape, evidence):
            return shape
    return "unknown"


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
        evidence = _shape_evidence(component, box, difference, core, shapes)
        found.append(
            DetectedObject(
                colour=_name_colour(median),
                shape=_name_shape(evidence, shapes),
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
