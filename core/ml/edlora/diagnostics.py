"""The attention-in-mask diagnostic: how much of a trained concept's token attention falls inside its mask.

Protocol (fixed, so numbers compare across runs): each image is centre-cropped to the training side and encoded
by the VAE (latent mean), noised with a seeded draw at each of ``DIAGNOSTIC_TIMESTEPS``, and run once through the
UNet with the concept's adapter at its training strength and the caption ``"a photo of a <concept>"`` (the first
template of the concept type) unless the caller gives one. Every cross-attention layer is captured; per map side
``r`` the share is ``Σ_x A(x)·M_r(x) / Σ_x A(x)`` with the mask area-resized to ``r`` (undilated), averaged over
both concept words, the timesteps and the images. 1.0 means all of the concept's attention lands on the concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import PIL.Image
import torch
from diffusers import DDPMScheduler

from core.errors import InvalidRequestError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.attach import attach_concept
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.augmentation import centre_view
from core.ml.edlora.captions import caption_templates
from core.ml.edlora.capture import ConceptAttentionStore, capture_concept_attention, concept_columns
from core.ml.edlora.embeddings import encode_layerwise
from core.ml.edlora.lora import activate_lora, lora_scope
from core.ml.edlora.separation import mass_inside, resize_mask
from core.ml.prompts import bind_caption

DIAGNOSTIC_TIMESTEPS = (200, 400, 600)
"""Noise levels the diagnostic measures at: low and middle noise, where maps are spatially meaningful."""
_BATCH = 4
_ADAPTER = "tessera_diagnostic"


@dataclass
class AttentionInMask:
    """Attention-in-mask shares of one concept on a set of images (see the module docstring).

    Args:
        overall: mean over resolutions, in [0, 1].
        per_resolution: map side (latent cells) → share.
        per_word: share of each concept word (``V_rand``, ``V_class``), averaged over resolutions.
        num_images: images measured.
    """

    overall: float
    per_resolution: dict[int, float]
    per_word: list[float]
    num_images: int
    timesteps: tuple[int, ...] = field(default=DIAGNOSTIC_TIMESTEPS)

    def as_dict(self) -> dict[str, object]:
        """JSON-able form for job output ``diagnostics``."""
        return {
            "attention_in_mask": round(self.overall, 4),
            "attention_in_mask_per_resolution": {str(k): round(v, 4) for k, v in self.per_resolution.items()},
            "attention_in_mask_per_word": [round(v, 4) for v in self.per_word],
            "attention_in_mask_images": self.num_images,
            "attention_in_mask_timesteps": list(self.timesteps),
        }


@torch.no_grad()
def measure_attention_in_mask(
    components: SDComponents,
    weights: EDLoRAWeights,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image],
    *,
    seed: int = 0,
    timesteps: Sequence[int] = DIAGNOSTIC_TIMESTEPS,
    caption: str | None = None,
) -> AttentionInMask:
    """Measure the attention-in-mask share of ``weights``'s concept on ``images`` with their concept ``masks``.

    ``components`` are left as they were (the adapter is attached inside ``lora_scope``).

    Args:
        images: RGB images (any size; centre-cropped to the adapter's training side).
        masks: one L-mode mask per image, white = concept.
        seed: seeds the noise draws.
        caption: a caption with ``<concept>`` to measure with instead of the concept type's first template (for
            models whose vocabulary lacks "a photo of").

    Raises:
        InvalidRequestError: no images, or not one mask per image.
    """
    if not images or len(masks) != len(images):
        raise InvalidRequestError(
            f"the diagnostic needs images and one mask each, got {len(images)} images and {len(masks)} masks",
            field="masks",
        )
    side = int(weights.training_options.get("resolution") or components.default_resolution)
    concept_type = str(weights.training_options.get("concept_type", "object"))
    text = caption if caption is not None else caption_templates(concept_type)[0]  # type: ignore[arg-type]
    bound = bind_caption(text, weights.concept_name, field="caption")
    views = [centre_view(img, [m], side) for img, m in zip(images, masks, strict=True)]
    scheduler = DDPMScheduler.from_config(components.scheduler.config)
    scaling = float(components.vae.config.scaling_factor)
    generator = torch.Generator().manual_seed(seed)
    store = ConceptAttentionStore()
    sums: dict[int, torch.Tensor] = {}
    count = 0
    text_encoder, unet = components.text_encoder, components.unet
    with lora_scope(text_encoder, unet), layerwise_cross_attention(unet) as num_layers:
        attach_concept(components, weights, _ADAPTER, num_layers)
        activate_lora(text_encoder, _ADAPTER, weights.alpha)
        activate_lora(unet, _ADAPTER, weights.alpha)
        embeddings = {weights.concept_name: weights.token_embeddings.to(components.device)}
        with capture_concept_attention(unet, store):
            for start in range(0, len(views), _BATCH):
                chunk = views[start : start + _BATCH]
                pixels = torch.stack([v.pixels for v in chunk]).to(components.device, components.dtype)
                latents = components.vae.encode(pixels).latent_dist.mean.float().cpu() * scaling
                concept = torch.stack([v.masks[0] for v in chunk])  # [b, 1, R, R]
                states = encode_layerwise(
                    components.tokenizer, text_encoder, [bound] * len(chunk), embeddings, num_layers
                )
                columns, _ = concept_columns(components.tokenizer, [bound] * len(chunk), weights.concept_name)
                for t in timesteps:
                    noise = torch.randn(latents.shape, generator=generator)
                    t_batch = torch.full((len(chunk),), int(t), dtype=torch.long)
                    noisy = scheduler.add_noise(latents, noise, t_batch)
                    store.clear()
                    store.columns = columns
                    unet(noisy.to(components.device, components.dtype), t_batch.to(components.device), states)
                    for r, maps in store.by_resolution().items():
                        share = mass_inside(maps, resize_mask(concept, r).to(maps.device))  # [b, K]
                        sums[r] = sums.get(r, torch.zeros(share.shape[1])) + share.sum(dim=0).cpu()
                count += len(chunk) * len(timesteps)
    per_resolution = {r: float(v.mean()) / count for r, v in sums.items()}
    per_word = (torch.stack(list(sums.values())).mean(dim=0) / count).tolist()
    overall = sum(per_resolution.values()) / len(per_resolution)
    return AttentionInMask(overall, per_resolution, per_word, len(images), tuple(int(t) for t in timesteps))
