"""Concept masks for training images: the segmenter interface, how the concept's mask is chosen, user-mask bypass.

A ``Segmenter`` turns one image (plus an optional point/box prompt, normalised to 0..1) into ``ConceptMasks``:
the concept's mask and the union of the other large objects (for the separation term). Two implementations:
``core.ml.masks.sam.SamSegmenter`` (Segment Anything) and ``ColourSegmenter`` here (flat-colour worlds such as the
``shapes`` preset, where a colour difference from the background is exact and a SAM would add nothing).

The default when no prompt is given (``select_concept``): among candidate masks covering at least
``MIN_CANDIDATE_FRACTION`` of the image and not touching all four borders (that is background), take the one
maximising ``sqrt(area share) · (1 − centroid distance from the centre / half diagonal)``. Training photos are
framed on their subject, so the subject is large and central; the square root keeps a small central part (a face,
a logo) from beating the whole subject around it, and the centrality factor keeps a large off-centre object (a sofa
behind the dog) from winning. When nothing qualifies the whole image is the mask, which turns the attention terms
off for that image rather than teaching a wrong region.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import PIL.Image

from core.ml.masks.cleanup import clean_mask, label_components
from core.schemas import MaskPrompt

logger = logging.getLogger(__name__)

MIN_CANDIDATE_FRACTION = 0.02
"""Candidate masks smaller than this share of the image are parts or specks, not a concept."""
OTHER_OBJECT_FRACTION = 0.02
"""Other objects kept for the separation term cover at least this share of the image."""
MAX_OTHER_OVERLAP = 0.1
"""A candidate overlapping the concept by more than this share of its own area is a part of the concept."""

MaskSource = Literal["user", "point", "box", "auto", "whole_image"]


@dataclass
class ConceptMasks:
    """Masks of one training image, ``(H, W)`` bool at the image's size.

    Args:
        concept: the concept's pixels.
        others: the union of the other large objects' pixels (minus the concept); all False when there are none.
        source: how ``concept`` was found.
    """

    concept: np.ndarray
    others: np.ndarray
    source: MaskSource

    def concept_image(self) -> PIL.Image.Image:
        """The concept mask as an L-mode image (white = concept), the format users upload."""
        return PIL.Image.fromarray(self.concept.astype(np.uint8) * 255, mode="L")

    def others_image(self) -> PIL.Image.Image:
        """The other objects' union as an L-mode image."""
        return PIL.Image.fromarray(self.others.astype(np.uint8) * 255, mode="L")


class Segmenter(Protocol):
    """Finds the concept (and the other objects) in one image."""

    def segment(self, image: PIL.Image.Image, prompt: MaskPrompt | None) -> ConceptMasks:
        """Masks of ``image``; ``prompt`` (normalised point or box) points at the concept when given."""
        ...


def prompt_in_pixels(prompt: MaskPrompt, size: tuple[int, int]) -> np.ndarray:
    """A normalised point ``[x, y]`` or box ``[x0, y0, x1, y1]`` in pixel coordinates of an image ``(W, H)``."""
    width, height = size
    coords = np.asarray(prompt.point if prompt.point is not None else prompt.box, dtype=np.float64)
    scale = np.array([width, height] * (len(coords) // 2), dtype=np.float64)
    return coords * scale


def _touches_all_borders(mask: np.ndarray) -> bool:
    return bool(mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any())


def select_concept(candidates: Sequence[np.ndarray], prompt: MaskPrompt | None) -> int | None:
    """Index of the candidate that is the concept, or None when none qualifies (see the module docstring).

    With a point: the largest candidate containing the point (the whole subject rather than a part); with a box:
    the candidate with the highest IoU with the box; a prompt that matches nothing falls back to the default.
    """
    if not candidates:
        return None
    height, width = candidates[0].shape
    if prompt is not None and prompt.point is not None:
        x, y = prompt_in_pixels(prompt, (width, height))
        px, py = min(int(x), width - 1), min(int(y), height - 1)
        containing = [i for i, m in enumerate(candidates) if m[py, px]]
        if containing:
            return max(containing, key=lambda i: int(candidates[i].sum()))
    if prompt is not None and prompt.box is not None:
        x0, y0, x1, y1 = prompt_in_pixels(prompt, (width, height)).round().astype(int)
        box = np.zeros((height, width), dtype=bool)
        box[y0:y1, x0:x1] = True
        ious = [(m & box).sum() / max(1, (m | box).sum()) for m in candidates]
        if max(ious) > 0:
            return int(np.argmax(ious))
    pixels = height * width
    half_diagonal = math.hypot(width, height) / 2
    best, best_score = None, -1.0
    for i, mask in enumerate(candidates):
        area = int(mask.sum())
        if area < MIN_CANDIDATE_FRACTION * pixels or _touches_all_borders(mask):
            continue
        ys, xs = np.nonzero(mask)
        distance = math.hypot(xs.mean() + 0.5 - width / 2, ys.mean() + 0.5 - height / 2) / half_diagonal
        score = math.sqrt(area / pixels) * (1.0 - distance)
        if score > best_score:
            best, best_score = i, score
    return best


def other_objects(candidates: Sequence[np.ndarray], concept: np.ndarray) -> np.ndarray:
    """Union of the candidates that are large, not background and not (mostly) part of the concept, minus it."""
    union = np.zeros_like(concept, dtype=bool)
    pixels = concept.size
    for mask in candidates:
        area = int(mask.sum())
        if area < OTHER_OBJECT_FRACTION * pixels or _touches_all_borders(mask):
            continue
        if (mask & concept).sum() > MAX_OTHER_OVERLAP * area:
            continue
        union |= mask
    others: np.ndarray = union & ~concept
    return others


def whole_image(size: tuple[int, int]) -> ConceptMasks:
    """The fallback when nothing qualifies: everything is the concept, no other objects."""
    width, height = size
    return ConceptMasks(np.ones((height, width), bool), np.zeros((height, width), bool), "whole_image")


FOREGROUND_THRESHOLD = 48
"""Max per-channel difference from the background colour that still counts as background (flat worlds)."""


class ColourSegmenter:
    """Segments flat-colour images: foreground = pixels far from the border's median colour, objects = components.

    Meant for the ``shapes`` preset, whose images are flat shapes on a flat background: this is exact there, while
    a tiny random SAM would be meaningless and a real SAM is not part of that preset.
    """

    def segment(self, image: PIL.Image.Image, prompt: MaskPrompt | None) -> ConceptMasks:
        """See ``Segmenter.segment``."""
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate((pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]))
        foreground = np.abs(pixels - np.median(border, axis=0)).max(axis=2) > FOREGROUND_THRESHOLD
        labels, areas = label_components(foreground)
        candidates = [labels == i for i in range(1, len(areas))]
        index = select_concept(candidates, prompt)
        if index is None:
            logger.warning("no object found for the concept mask; using the whole image")
            return whole_image(image.size)
        concept = clean_mask(candidates[index])
        source: MaskSource = "auto" if prompt is None else ("point" if prompt.point is not None else "box")
        return ConceptMasks(concept, other_objects(candidates, concept), source)


def compute_masks(
    segmenter: Segmenter | None,
    images: Sequence[PIL.Image.Image],
    *,
    prompts: Sequence[MaskPrompt | None] | None = None,
    user_masks: Sequence[PIL.Image.Image | None] | None = None,
) -> list[ConceptMasks]:
    """Masks for every training image; a user mask is taken as given (white = concept) and bypasses the segmenter.

    Args:
        segmenter: used only for images without a user mask (may be None when every image has one).
        prompts: per image, a point/box prompt or None (the default choice).
        user_masks: per image, an uploaded mask or None.

    Raises:
        ValueError: an image needs the segmenter but none was given.
    """
    result = []
    for i, image in enumerate(images):
        user = user_masks[i] if user_masks is not None else None
        if user is not None:
            gray = user.convert("L").resize(image.size, PIL.Image.Resampling.BILINEAR)
            concept = np.asarray(gray) > 127
            result.append(ConceptMasks(concept, np.zeros_like(concept), "user"))
            continue
        if segmenter is None:
            raise ValueError(f"images[{i}] has no mask and no segmenter was given")
        result.append(segmenter.segment(image, prompts[i] if prompts is not None else None))
    return result
