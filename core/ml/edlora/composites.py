"""Seg-Mix composites (MuDI, ml-methods §6.1): training examples that show the concept beside other objects.

Why: the separation loss's third term (``separation.py``: attention mass on *other objects*) needs training images
that contain other objects with known masks. Photos of a concept alone have none, so that term is zero and cannot
teach the concept's words to stay off a neighbour. A composite pastes the segmented concept beside a segmented
neighbour, each with an exact mask, and captions both in image order ("a <concept> on the left and a dog on the
right"), so the concept's words learn to stay on their own object while another object is in the picture.

How one composite of side ``R`` is made (all draws from one ``numpy`` generator seeded with ``seed``):

- *Background*: ``"concept"`` (default) is the concept's own photo, short side resized to ``R`` and centre-cropped
  like the trainer's view, with the concept removed and the hole filled from its surroundings (push-pull: a
  pyramid of known-pixel averages, finer levels blended over coarser ones). It keeps the photo's light and colours,
  so the pasted concept sits in a scene it was photographed in, and needs no model. The concept mask is dilated
  before filling so a segmenter's boundary errors leave no rim of concept pixels behind. Other objects the photo's
  ``others`` mask marks stay there and stay marked. ``"flat"`` is a plate of the median background colour: a clean
  plate when the photo's background holds unmarked objects (they would count as background).
- *Layout*: the left and right halves, one object in each, so the two masks can never overlap; the concept's side
  alternates between composites (both orders, balanced; the first side is drawn), neighbours and concept photos are
  used in turn (each a seeded permutation, cycled).
- *Scale and place*: each object's mask bounding box is scaled to fit its half (``R/2`` wide, the ``vertical``
  band high: all of ``R`` by default) times a factor drawn from ``scale``, then placed at a uniform random position
  wholly inside that box.
- *Paste*: premultiplied colour and mask are resampled by the same antialiased bilinear kernel and blended over
  the plate (``plate·(1 − α) + colour·α``); the returned masks are these alphas, so each mask pixel is exactly the
  object's opacity in that pixel (soft edges included) and the supports of the concept's and the other objects'
  masks are disjoint.
- *Caption*: ``caption_template`` with ``{left}`` and ``{right}`` replaced by the phrases in image order; the
  concept is written ``concept_phrase`` (default ``"a <concept>"``, the placeholder ``train_edlora`` binds to its
  learned words).

Neighbours are named by plain phrases ("a dog", or another concept's class word, "a cat"), not by learned tokens:
``train_edlora`` learns one concept, and any other ``<name>`` in a caption would be tokenised as literal text. Same
class word as the concept ("a <concept> on the left and a dog on the right" for a corgi) is the useful hard case.

A ``share`` of the returned set are composites; the rest are the concept's own examples, returned unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image
import torch

from core.errors import InvalidRequestError
from core.ml.edlora.planes import centre_square, fill_from_surroundings, resize_planes, to_image, to_tensor
from core.ml.masks.cleanup import dilate_mask
from core.ml.prompts import CAPTION_PLACEHOLDER

BackgroundSource = Literal["concept", "flat"]

DEFAULT_CAPTION_TEMPLATE = "{left} on the left and {right} on the right"
"""The two-object caption of the shapes world and of Concept Conductor's default layout (left, then right)."""
DEFAULT_SCALE = (0.6, 0.95)
"""Range of an object's size, as a fraction of the largest size that fits its half (shapes pairs are 17-24 px of
a 32 px half: about 0.55-0.75; photos want the subject large)."""
FILL_DILATION = 0.03
"""The concept mask is dilated by this fraction of the side before its hole is filled (as ``separation_dilation``)."""
MAX_PHRASE_LENGTH = 80
MASK_THRESHOLD = 127
"""A mask pixel above this marks the object (for bounding boxes and emptiness checks; blending uses soft values)."""


@dataclass(frozen=True)
class Cutout:
    """An object to paste beside the concept.

    Args:
        image: its photo, any size (converted to RGB).
        mask: L-mode (or convertible), white = the object; resized to the photo's size when it differs.
        phrase: how captions name it, plain words ("a dog", "a red circle"); no ``<...>`` references.
    """

    image: PIL.Image.Image
    mask: PIL.Image.Image
    phrase: str


@dataclass(frozen=True)
class TrainingExample:
    """One training example in ``train_edlora``'s terms (pass the fields as its per-image lists).

    Args:
        image: RGB; composites are ``R x R``, the concept's own examples keep their size (the trainer crops).
        mask: L-mode, white = the concept (``masks``).
        others: L-mode union of the other objects, or None for none (``other_masks``).
        caption: with ``<concept>`` where the concept goes, or None for the trainer's default templates.
        composite: whether this example was composed here (False: one of the concept's own examples).
    """

    image: PIL.Image.Image
    mask: PIL.Image.Image
    others: PIL.Image.Image | None = None
    caption: str | None = None
    composite: bool = False


def composite_count(count: int, share: float) -> int:
    """How many of ``count`` examples are composites: ``share · count`` rounded half up."""
    return math.floor(share * count + 0.5)


def _check_phrase(phrase: str, field: str) -> None:
    if not phrase.strip() or len(phrase) > MAX_PHRASE_LENGTH:
        raise InvalidRequestError(
            f"{field} must be 1..{MAX_PHRASE_LENGTH} characters of plain words, got {phrase!r}", field=field
        )
    if "<" in phrase or ">" in phrase:
        raise InvalidRequestError(
            f"{field} must be plain words such as 'a dog' (the trainer learns one concept; another concept is "
            f"named by its class word), got {phrase!r}",
            field=field,
        )


def _mask_array(image: PIL.Image.Image, mask: PIL.Image.Image) -> np.ndarray:
    """The mask at the photo's size, ``(H, W)`` uint8."""
    gray = mask.convert("L")
    if gray.size != image.size:
        gray = gray.resize(image.size, PIL.Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def _cut_problem(mask: np.ndarray) -> str | None:
    """Why a mask cannot cut an object out of its photo, or None when it can."""
    marked = mask > MASK_THRESHOLD
    if not marked.any():
        return "must mark the object in white, got an all-black mask"
    if marked.all():
        return "marks the whole image; a cut-out needs an object smaller than its photo"
    return None


def _check(
    concept: Sequence[TrainingExample],
    neighbours: Sequence[Cutout],
    count: int,
    resolution: int,
    share: float,
    scale: tuple[float, float],
    vertical: tuple[float, float],
    concept_phrase: str,
    caption_template: str,
) -> None:
    if not concept:
        raise InvalidRequestError("concept must hold at least 1 example, got 0", field="concept")
    if count < 1:
        raise InvalidRequestError(f"count must be at least 1, got {count}", field="count")
    if not 0.0 <= share <= 1.0:
        raise InvalidRequestError(f"share must be within 0..1, got {share}", field="share")
    if resolution < 16 or resolution % 2:
        raise InvalidRequestError(f"resolution must be an even number >= 16, got {resolution}", field="resolution")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise InvalidRequestError(f"scale must satisfy 0 < low <= high <= 1, got {list(scale)}", field="scale")
    if not (
        0.0 <= vertical[0] < vertical[1] <= 1.0
        and round(vertical[1] * resolution) - round(vertical[0] * resolution) >= 2
    ):
        raise InvalidRequestError(
            f"vertical must satisfy 0 <= top < bottom <= 1 and span at least 2 rows, got {list(vertical)}",
            field="vertical",
        )
    if composite_count(count, share) and not neighbours:
        raise InvalidRequestError(
            f"neighbours must hold at least 1 cut-out when share > 0 (share {share}, count {count})",
            field="neighbours",
        )
    if concept_phrase.count(CAPTION_PLACEHOLDER) != 1:
        raise InvalidRequestError(
            f"concept_phrase must contain {CAPTION_PLACEHOLDER} once, got {concept_phrase!r}", field="concept_phrase"
        )
    if caption_template.count("{left}") != 1 or caption_template.count("{right}") != 1:
        raise InvalidRequestError(
            f"caption_template must contain {{left}} and {{right}} once each, got {caption_template!r}",
            field="caption_template",
        )
    for i, neighbour in enumerate(neighbours):
        _check_phrase(neighbour.phrase, f"neighbours[{i}].phrase")


@dataclass(frozen=True)
class _Object:
    """A cut-out ready to paste, cropped to the object: ``premultiplied`` colour·alpha ``[3, h, w]``, ``alpha``
    ``[1, h, w]``. Resampling premultiplied colour keeps the photo's own background out of the object's soft edge
    (no fringe): a resampled pixel is the alpha-weighted mean of object colour only."""

    premultiplied: torch.Tensor
    alpha: torch.Tensor


def _cut(image: PIL.Image.Image, mask: np.ndarray) -> _Object:
    """The object's bounding box (plus a 2-pixel margin for soft edges) from the photo and its mask."""
    ys, xs = np.nonzero(mask > MASK_THRESHOLD)
    height, width = mask.shape
    top, bottom = max(0, int(ys.min()) - 2), min(height, int(ys.max()) + 3)
    left, right = max(0, int(xs.min()) - 2), min(width, int(xs.max()) + 3)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)[top:bottom, left:right]
    alpha = to_tensor(mask[top:bottom, left:right])
    return _Object(to_tensor(rgb) * alpha, alpha)


def _background(
    example: TrainingExample, mask: np.ndarray, side: int, source: BackgroundSource
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plate ``[3, side, side]`` and the other objects still on it ``[1, side, side]`` (zeros for none)."""
    pixels = centre_square(to_tensor(np.asarray(example.image.convert("RGB"), dtype=np.uint8)), side)
    concept = centre_square(to_tensor(mask), side)
    known = 1.0 - dilate_mask(concept, max(1, round(FILL_DILATION * side)))
    if float(known.sum()) <= 0.0:
        # The dilated concept covers the whole crop: only a flat plate of the undilated outside is left.
        known, source = 1.0 - concept, "flat"
    others = torch.zeros(1, side, side)
    if source == "flat":
        outside = pixels[:, known[0] > 0.5] if bool((known[0] > 0.5).any()) else pixels.reshape(3, -1)
        plate = outside.median(dim=1).values[:, None, None].expand(3, side, side).clone()
        return plate, others
    if example.others is not None:
        gray = example.others.convert("L")
        if gray.size != example.image.size:
            gray = gray.resize(example.image.size, PIL.Image.Resampling.BILINEAR)
        others = centre_square(to_tensor(np.asarray(gray, dtype=np.uint8)), side) * known
    return fill_from_surroundings(pixels, known), others


def _place(
    obj: _Object, half: int, band: tuple[int, int], factor: float, rng: np.random.Generator
) -> tuple[int, int, _Object]:
    """Scale ``obj`` to ``factor`` of the largest size fitting a box ``half`` wide spanning the rows ``band``
    (``[top, bottom)``), and draw a top-left that keeps it inside that box."""
    height, width = obj.alpha.shape[-2:]
    rows = band[1] - band[0]
    fit = factor * min(half / width, rows / height)
    size = (min(rows, max(1, round(height * fit))), min(half, max(1, round(width * fit))))
    scaled = _Object(resize_planes(obj.premultiplied, size), resize_planes(obj.alpha, size))
    top = band[0] + int(rng.integers(0, rows - size[0] + 1))
    left = int(rng.integers(0, half - size[1] + 1))
    return top, left, scaled


def _compose(
    plate: torch.Tensor,
    plate_others: torch.Tensor,
    concept: _Object,
    neighbour: _Object,
    concept_left: bool,
    scale: tuple[float, float],
    vertical: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste both objects into their halves: image ``[3, R, R]``, concept mask and others mask ``[1, R, R]``."""
    side = plate.shape[-1]
    half = side // 2
    band = (round(vertical[0] * side), round(vertical[1] * side))
    image = plate.clone()
    alphas = []
    for obj, is_left in ((concept, concept_left), (neighbour, not concept_left)):
        factor = float(rng.uniform(scale[0], scale[1]))
        top, left, scaled = _place(obj, half, band, factor, rng)
        left += 0 if is_left else half
        alpha = torch.zeros(1, side, side)
        alpha[:, top : top + scaled.alpha.shape[1], left : left + scaled.alpha.shape[2]] = scaled.alpha
        region = image[:, top : top + scaled.alpha.shape[1], left : left + scaled.alpha.shape[2]]
        region.mul_(1.0 - scaled.alpha).add_(scaled.premultiplied)
        alphas.append(alpha)
    concept_alpha, neighbour_alpha = alphas
    # Objects left on the plate show where neither pasted object covers them; none may overlap the concept's
    # support, so the two returned masks stay disjoint (the separation term ignores the concept's rim anyway).
    visible = plate_others * (1.0 - neighbour_alpha) * (concept_alpha == 0)
    others = torch.maximum(neighbour_alpha, visible)
    return image, concept_alpha, others


def compose_examples(
    concept: Sequence[TrainingExample],
    neighbours: Sequence[Cutout],
    *,
    count: int,
    seed: int,
    resolution: int,
    share: float = 0.5,
    background: BackgroundSource = "concept",
    scale: tuple[float, float] = DEFAULT_SCALE,
    vertical: tuple[float, float] = (0.0, 1.0),
    concept_phrase: str = f"a {CAPTION_PLACEHOLDER}",
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
) -> list[TrainingExample]:
    """A training set of ``count`` examples: ``composite_count(count, share)`` composites, the rest the concept's own.

    The concept's own examples come first, unchanged, in input order (chosen by cycling a seeded permutation of
    ``concept``, so every example appears once before any appears twice); composites follow. Same arguments, same
    seed: the same pixels.

    Args:
        concept: the concept's own examples (photo, mask white = concept, optional others mask and caption).
        neighbours: objects to paste beside the concept, each with its phrase.
        count: examples to return, at least 1.
        seed: seeds every draw (layouts, scales, positions, which photo and neighbour).
        resolution: side ``R`` of the composites in pixels (the training resolution), even, at least 16.
        share: fraction of ``count`` that are composites, in [0, 1].
        background: ``"concept"`` (the concept photo, concept filled in) or ``"flat"`` (its median background
            colour); see the module docstring.
        scale: ``(low, high)`` range of each object's size relative to the largest that fits its half, in (0, 1].
        vertical: ``(top, bottom)`` band of rows, as fractions of the side, that objects stay within (the whole
            height by default; a world whose pairs sit mid-height wants e.g. ``(0.2, 0.8)``).
        concept_phrase: how captions name the concept; must contain ``<concept>`` once.
        caption_template: the composite caption with ``{left}`` and ``{right}`` once each.

    Returns:
        ``count`` examples; composites are ``R x R`` RGB with L-mode ``mask`` and ``others`` (exact alphas,
        disjoint supports) and a caption naming both objects in image order.

    Raises:
        InvalidRequestError: a bad argument; ``field`` names it (``concept[i].mask``, ``neighbours[i].phrase``,
            ``share``, ...) and the message gives the rule and the value.
    """
    _check(concept, neighbours, count, resolution, share, scale, vertical, concept_phrase, caption_template)
    rng = np.random.default_rng(seed)
    composites = composite_count(count, share)
    originals = count - composites

    def cycle(length: int, n: int) -> list[int]:
        order = rng.permutation(length).tolist()
        return [order[i % length] for i in range(n)]

    examples = [concept[i] for i in sorted(cycle(len(concept), originals))]
    if not composites:
        return examples
    neighbour_masks = []
    for i, neighbour in enumerate(neighbours):
        neighbour_masks.append(_mask_array(neighbour.image, neighbour.mask))
        problem = _cut_problem(neighbour_masks[-1])
        if problem is not None:
            raise InvalidRequestError(f"neighbours[{i}].mask {problem}", field=f"neighbours[{i}].mask")
    # A concept example whose mask marks nothing or everything (a segmenter's whole-image fallback) still trains
    # as itself; it only cannot be cut out.
    concept_masks = {i: _mask_array(e.image, e.mask) for i, e in enumerate(concept)}
    usable = [i for i, m in concept_masks.items() if _cut_problem(m) is None]
    if not usable:
        raise InvalidRequestError(
            "concept: no example has a mask that marks part of its image (each marks nothing or everything), "
            "so the concept cannot be cut out for composites",
            field="concept",
        )
    sources = [usable[i] for i in cycle(len(usable), composites)]
    partners = cycle(len(neighbours), composites)
    first_left = bool(rng.integers(0, 2))
    plates: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    cut_concepts: dict[int, _Object] = {}
    cut_neighbours: dict[int, _Object] = {}
    for k in range(composites):
        source, partner = sources[k], partners[k]
        if source not in plates:
            plates[source] = _background(concept[source], concept_masks[source], resolution, background)
            cut_concepts[source] = _cut(concept[source].image, concept_masks[source])
        if partner not in cut_neighbours:
            cut_neighbours[partner] = _cut(neighbours[partner].image, neighbour_masks[partner])
        plate, plate_others = plates[source]
        concept_left = first_left == (k % 2 == 0)
        image, mask, others = _compose(
            plate, plate_others, cut_concepts[source], cut_neighbours[partner], concept_left, scale, vertical, rng
        )
        left, right = (
            (concept_phrase, neighbours[partner].phrase)
            if concept_left
            else (neighbours[partner].phrase, concept_phrase)
        )
        caption = caption_template.replace("{left}", left).replace("{right}", right)
        examples.append(TrainingExample(to_image(image), to_image(mask), to_image(others), caption, composite=True))
    return examples
