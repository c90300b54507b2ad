"""CLIP-T and CLIP-I with CLIP ViT-B/32, as Custom Diffusion and Mix-of-Show compute them.

- CLIP-T is CLIPScore, ``mean_i 2.5 · max(cos(E_img(x_i), E_txt(p_i)), 0)``, where ``p_i`` is image ``i``'s prompt
  with every concept reference ``<name>`` replaced by the concept's class word (``"a <corgi> on the beach"`` →
  ``"a dog on the beach"``): the text encoder has never seen the learned words, so scoring them would measure noise.
- Prefix: Custom Diffusion scores the bare prompt; Mix-of-Show prepends ``"A photo depicts "`` (CLIPScore paper's
  convention). ``prefix=""`` is the default, so numbers compare with Custom Diffusion's tables; pass
  ``prefix=CLIPSCORE_PREFIX`` for Mix-of-Show's. Always report which.
- CLIP-I is the mean cosine over all (generated, reference) pairs of CLIP image embeddings, unscaled and unclipped
  (Custom Diffusion; Mix-of-Show clips each cosine at 0, which only matters for unrelated images).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import PIL.Image
import torch

from core.errors import InvalidRequestError, UnknownConceptError
from core.ml.metrics.encoders import CLIPEncoder, model_device_dtype
from core.ml.metrics.similarity import clipscore, mean_pairwise_cosine
from core.rules import CONCEPT_REF_RE

CLIPSCORE_PREFIX = "A photo depicts "
"""Mix-of-Show's (and the CLIPScore paper's) text prefix for CLIP-T."""

DEFAULT_BATCH_SIZE = 32

_SPACES = re.compile(r"\s+")


def class_word_prompt(prompt: str, class_words: Mapping[str, str]) -> str:
    """Replace each concept reference ``<name>`` by ``class_words[name]`` (the protocol's CLIP-T caption).

    Raises:
        UnknownConceptError: the prompt references a name that ``class_words`` lacks.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in class_words:
            raise UnknownConceptError(
                f"prompt references <{name}> but no class word is given for it (known: {sorted(class_words)})",
                field="class_words",
            )
        return class_words[name]

    return _SPACES.sub(" ", CONCEPT_REF_RE.sub(replace, prompt)).strip()


def _check_images(field: str, images: Sequence[PIL.Image.Image]) -> None:
    if not images:
        raise InvalidRequestError(f"`{field}` must hold at least one image", field=field)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InvalidRequestError(f"`batch_size` must be at least 1, got {batch_size}", field="batch_size")


@torch.inference_mode()
def clip_image_embeddings(
    encoder: CLIPEncoder, images: Sequence[PIL.Image.Image], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Projected CLIP image embeddings (``clip``'s ``encode_image``), L2-normalised.

    Returns:
        ``[N, D]`` float32 on the CPU (``D`` = ``projection_dim``, 512 for ViT-B/32).
    """
    _check_images("images", images)
    _check_batch_size(batch_size)
    device, dtype = model_device_dtype(encoder.model)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = encoder.transform(images[start : start + batch_size]).to(device=device, dtype=dtype)
        # vision_model + visual_projection rather than get_image_features, whose return type changed in transformers 5.
        pooled = encoder.model.vision_model(pixel_values=pixels).pooler_output
        chunks.append(encoder.model.visual_projection(pooled).float().cpu())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


@torch.inference_mode()
def clip_text_embeddings(
    encoder: CLIPEncoder, prompts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """Projected CLIP text embeddings (``clip``'s ``encode_text``), L2-normalised; prompts past the context are cut.

    Returns:
        ``[N, D]`` float32 on the CPU.
    """
    if not prompts:
        raise InvalidRequestError("`prompts` must hold at least one prompt", field="prompts")
    _check_batch_size(batch_size)
    device, _ = model_device_dtype(encoder.model)
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = encoder.tokenizer(
            list(prompts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        ).to(device)
        pooled = encoder.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        chunks.append(encoder.model.text_projection(pooled).float().cpu())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def clip_t_from_embeddings(
    encoder: CLIPEncoder,
    image_embeddings: torch.Tensor,
    prompts: Sequence[str],
    *,
    class_words: Mapping[str, str] | None = None,
    prefix: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """CLIP-T for images already embedded with ``clip_image_embeddings`` (``[N, D]``); arguments as ``clip_t``."""
    count = image_embeddings.shape[0]
    if len(prompts) not in (1, count):
        raise InvalidRequestError(
            f"`prompts` must hold one prompt or one per image ({count}), got {len(prompts)}", field="prompts"
        )
    captions = [prefix + class_word_prompt(p, class_words or {}) for p in prompts]
    # A single prompt is encoded once and shared by every image.
    text_embeddings = clip_text_embeddings(encoder, captions, batch_size=batch_size).expand(count, -1)
    return clipscore(image_embeddings, text_embeddings)


def clip_t(
    encoder: CLIPEncoder,
    images: Sequence[PIL.Image.Image],
    prompts: Sequence[str],
    *,
    class_words: Mapping[str, str] | None = None,
    prefix: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """CLIP-T: CLIPScore ``mean_i 2.5 · max(cos(image_i, caption_i), 0)`` of generated images against their prompts.

    Args:
        encoder: CLIP ViT-B/32 from ``load_clip``.
        images: the generated images.
        prompts: one prompt per image, or one prompt for all; ``<name>`` references are replaced by class words.
        class_words: concept name → class word (``{"corgi": "dog"}``).
        prefix: text put before every caption: ``""`` (Custom Diffusion) or ``CLIPSCORE_PREFIX`` (Mix-of-Show).
        batch_size: images or prompts per forward pass; results do not depend on it beyond float rounding.

    Returns:
        A score in [0, 2.5].

    Raises:
        UnknownConceptError: a prompt references a concept missing from ``class_words``.
        InvalidRequestError: no images, or a prompt count that is neither 1 nor ``len(images)``.
    """
    image_embeddings = clip_image_embeddings(encoder, images, batch_size=batch_size)
    return clip_t_from_embeddings(
        encoder, image_embeddings, prompts, class_words=class_words, prefix=prefix, batch_size=batch_size
    )


def clip_i(
    encoder: CLIPEncoder,
    generated: Sequence[PIL.Image.Image],
    references: Sequence[PIL.Image.Image],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """CLIP-I: mean cosine of CLIP image embeddings over all (generated, reference) pairs.

    Returns:
        A score in [-1, 1] (identical images give 1; in practice 0.6-0.9 for a concept against its references).

    Raises:
        InvalidRequestError: ``generated`` or ``references`` is empty.
    """
    _check_images("generated", generated)
    _check_images("references", references)
    return mean_pairwise_cosine(
        clip_image_embeddings(encoder, generated, batch_size=batch_size),
        clip_image_embeddings(encoder, references, batch_size=batch_size),
    )
