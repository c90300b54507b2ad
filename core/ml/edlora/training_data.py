"""ED-LoRA's training data: the checked inputs, every view encoded once by the VAE, and what each step draws.

``prepare_data`` turns the images (and their concept and other-object masks, and captions) into ``TrainingData``:
latent distributions per view, masks on the latent grid, bound captions. ``batches``, ``batch_prompts`` and
``loss_weight`` are what ``core.ml.edlora.trainer.train_edlora`` reads from it per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import PIL.Image
import torch
import torch.nn.functional as F

from core.errors import InvalidRequestError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import OtherTermState
from core.ml.edlora.augmentation import TrainingView, centre_view, random_view
from core.ml.masks.cleanup import dilate_mask, enclosed_region
from core.ml.prompts import PromptPart, bind_caption
from core.rules import CONCEPT_NAME_RE, is_concept_name
from core.training_options import EDLoRAConfig

_VAE_CHUNK = 4
"""Views the VAE encodes per call."""


@dataclass
class TrainingData:
    """Encoded training views (``V`` = images x (1 + augmentation_views)), all on CPU, latent grid ``h x w``."""

    latent_mean: torch.Tensor  # [V, 4, h, w] float32
    latent_std: torch.Tensor  # [V, 4, h, w]
    source: list[int]  # image index of each view
    masks: torch.Tensor | None  # [V, 1, h, w] in [0, 1]: the concept
    regions: torch.Tensor | None  # [V, 1, h, w]: the concept with its holes filled (the separation loss's mask)
    dilated: torch.Tensor | None  # [V, 1, h, w]: the region dilated by separation_dilation (at pixel level)
    others: torch.Tensor | None  # [V, 1, h, w]: the area other objects enclose (zeros when none were given)
    valid: torch.Tensor | None  # [V, 1, h, w]: 0 on padding; None when no view is padded
    captions: list[list[PromptPart] | None] | None  # per image; None (or a None entry) = the default templates


def check_inputs(
    images: Sequence[PIL.Image.Image],
    concept_name: str,
    class_word: str,
    masks: Sequence[PIL.Image.Image] | None,
    captions: Sequence[str | None] | None,
    other_masks: Sequence[PIL.Image.Image | None] | None = None,
) -> None:
    if not images:
        raise InvalidRequestError("images must hold at least 1 image, got 0", field="images")
    if not is_concept_name(concept_name):
        raise InvalidRequestError(
            f"concept.name must match {CONCEPT_NAME_RE.pattern}, got {concept_name!r}", field="concept.name"
        )
    if not class_word.strip() or len(class_word.split()) != 1:
        raise InvalidRequestError(
            f"concept.class_word must be one plain word, got {class_word!r}", field="concept.class_word"
        )
    if masks is not None and len(masks) != len(images):
        raise InvalidRequestError(
            f"masks must hold one mask per image ({len(images)}), got {len(masks)}", field="masks"
        )
    if other_masks is not None and (masks is None or len(other_masks) != len(images)):
        raise InvalidRequestError(
            f"other_masks need masks and one entry per image ({len(images)})", field="other_masks"
        )
    if captions is not None and len(captions) != len(images):
        raise InvalidRequestError(
            f"captions must hold one caption per image ({len(images)}), got {len(captions)}", field="captions"
        )


def _views(
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image] | None,
    other_masks: Sequence[PIL.Image.Image | None] | None,
    resolution: int,
    augmentation_views: int,
    generator: torch.Generator,
) -> tuple[list[TrainingView], list[int]]:
    views, source = [], []
    for i, image in enumerate(images):
        layers: list[PIL.Image.Image] = []
        if masks is not None:
            other = other_masks[i] if other_masks is not None else None
            layers = [masks[i], other if other is not None else PIL.Image.new("L", masks[i].size, 0)]
        views.append(centre_view(image, layers, resolution))
        source.append(i)
        for _ in range(augmentation_views):
            views.append(random_view(image, layers, resolution, generator))
            source.append(i)
    return views, source


@torch.no_grad()
def prepare_data(
    components: SDComponents,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image] | None,
    other_masks: Sequence[PIL.Image.Image | None] | None,
    captions: Sequence[str | None] | None,
    concept_name: str,
    resolution: int,
    config: EDLoRAConfig,
    generator: torch.Generator,
) -> TrainingData:
    """Encode every view once with the frozen VAE; keep the latent distribution to sample from each step."""
    views, source = _views(images, masks, other_masks, resolution, config.augmentation_views, generator)
    pixels = torch.stack([v.pixels for v in views])  # [V, 3, R, R] in [-1, 1]
    means, stds = [], []
    for chunk in pixels.split(_VAE_CHUNK):
        dist = components.vae.encode(chunk.to(components.device, components.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    mean = torch.cat(means)
    latent_size = (mean.shape[-2], mean.shape[-1])

    def to_latent(planes: torch.Tensor) -> torch.Tensor:  # [V, 1, R, R] -> [V, 1, h, w], soft edges
        return F.interpolate(planes, size=latent_size, mode="area")

    valid = None
    if config.augmentation_views:
        valid = to_latent(torch.stack([v.valid for v in views]))
    latent_masks = regions = dilated = others = None
    if masks is not None:
        concept = torch.stack([v.masks[0] for v in views])  # [V, 1, R, R]
        latent_masks = to_latent(concept)
        for i, area in enumerate(latent_masks.sum(dim=(1, 2, 3)).tolist()):
            if area <= 0 and i % (1 + config.augmentation_views) == 0:
                raise InvalidRequestError(
                    f"masks[{source[i]}] must mark the concept in white, got an all-black mask",
                    field=f"masks[{source[i]}]",
                )
        # The diffusion loss weighs the exact mask (a hole is background to be drawn); the separation loss reads
        # the enclosed regions (cleanup.enclosed_region says why), computed only when it is on.
        fill = enclosed_region if config.separation_loss_weight > 0 else (lambda planes: planes)
        region = fill(concept)
        regions = to_latent(region)
        radius = round(config.separation_dilation * resolution)
        dilated = to_latent(dilate_mask(region, radius))
        others = to_latent(fill(torch.stack([v.masks[1] for v in views])))
    bound: list[list[PromptPart] | None] | None = None
    if captions is not None and any(c is not None for c in captions):
        bound = [
            None if c is None else bind_caption(c, concept_name, field=f"captions[{i}]")
            for i, c in enumerate(captions)
        ]
    return TrainingData(mean, torch.cat(stds), source, latent_masks, regions, dilated, others, valid, bound)


def batch_prompts(
    data: TrainingData,
    index: list[int],
    templates: Sequence[str],
    concept_name: str,
    generator: torch.Generator,
) -> list[list[PromptPart]]:
    """The batch's captions: each image's own, or a random default template where it has none.

    Templates are drawn (for the whole batch) only when some image has no caption, so runs where every image has
    one, or none has, draw exactly what they always drew.
    """
    if data.captions is None:
        picks = torch.randint(0, len(templates), (len(index),), generator=generator).tolist()
        return [bind_caption(templates[p], concept_name) for p in picks]
    own = [data.captions[data.source[i]] for i in index]
    if all(c is not None for c in data.captions):
        return [c for c in own if c is not None]
    picks = torch.randint(0, len(templates), (len(index),), generator=generator).tolist()
    return [c if c is not None else bind_caption(templates[p], concept_name) for c, p in zip(own, picks, strict=True)]


def examples_with_other_objects(data: TrainingData, augmentation_views: int) -> int:
    """Training images whose (centre-view, latent-grid) other-objects mask marks anything."""
    if data.others is None:
        return 0
    centre = data.others[:: 1 + augmentation_views]  # [N, 1, h, w]: the first view of each image is its centre view
    return int((centre.sum(dim=(1, 2, 3)) > 0).sum())


def other_term_state(separating: bool, config: EDLoRAConfig, with_others: int) -> OtherTermState:
    """``off``: no separation loss or no weight on the term; ``no_other_objects``: on, but no example has other
    objects, so the term is identically 0; ``active``: it has something to act on."""
    if not separating or not config.separation_other_weight:
        return "off"
    return "active" if with_others else "no_other_objects"


def batches(num_images: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches of image indices: shuffled epochs, concatenated (batches may span epochs)."""
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending += torch.randperm(num_images, generator=generator).tolist()
        yield pending[:batch_size]
        pending = pending[batch_size:]


def loss_weight(data: TrainingData, index: list[int], background: float) -> torch.Tensor | None:
    """Per-pixel weight ``[B, 1, h, w]`` of the diffusion loss: mask (+ background weight) times valid pixels."""
    weight = None
    if data.masks is not None:
        mask = data.masks[index]
        weight = mask + background * (1.0 - mask) if background else mask
    if data.valid is not None:
        weight = data.valid[index] if weight is None else weight * data.valid[index]
    return weight
