"""Naming a shape from its outline: each shape's :class:`ShapeRule` (the IoU floor, hole and radius-swing limits
that the calibration measured), the :class:`ShapeEvidence` measured of one component (template IoUs, solidity,
hole share, radial swings) and the choice of the best-fitting shape whose rule the outline passes."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tessera_shapes import drawing

# A template is compared at this coverage: the foreground threshold keeps pixels about a third covered.
TEMPLATE_COVERAGE = 0.35
# The IoU floor of a shape without a rule of its own (the VAE-only extras). It was the only shape test before the
# near-miss calibration: at 0.55 it accepted 190 of 216 pinched squares and every bitten square, oblong, rounded
# diamond, pentagon and ellipse (see tessera_shapes.calibration).
MIN_SHAPE_IOU = 0.55

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


def neighbourhood(mask: np.ndarray, combine: np.ufunc) -> np.ndarray:
    """Each pixel of a boolean ``mask`` combined with its eight neighbours (outside the image counts as False):
    ``np.logical_or`` dilates, ``np.logical_and`` erodes."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    combined: np.ndarray = combine.reduce(
        [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    return combined


def _dilate(mask: np.ndarray) -> np.ndarray:
    return neighbourhood(mask, np.logical_or)


def measure_shape(
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


def name_shape(evidence: ShapeEvidence, shapes: Sequence[str]) -> str:
    """The best-fitting template whose rule the outline passes; ``"unknown"`` if none does."""
    for shape in sorted(shapes, key=lambda s: -evidence.iou(s)):
        if not shape_failures(shape, evidence):
            return shape
    return "unknown"
