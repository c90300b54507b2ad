"""The two scores the protocol builds from embeddings: mean pairwise cosine and CLIPScore.

Both take L2-normalised embeddings, so a dot product is a cosine. They are pure tensor functions; the encoders that
produce the embeddings live in ``core.ml.metrics.clip_score`` and ``core.ml.metrics.dino``.
"""

from __future__ import annotations

import torch

from core.errors import InvalidRequestError

CLIPSCORE_WEIGHT = 2.5
"""CLIPScore's ``w`` (Hessel et al. 2021), used by Custom Diffusion and Mix-of-Show; it stretches CLIP's typical
0.2-0.35 text-image cosines towards [0, 1], so CLIP-T here is 2.5× the raw cosine that DreamBooth-style tables show."""


def _check_embeddings(name: str, embeddings: torch.Tensor) -> None:
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InvalidRequestError(f"`{name}` must be a non-empty [N, D] tensor, got shape {tuple(embeddings.shape)}")


def mean_pairwise_cosine(generated: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine over all ``(generated, reference)`` pairs (CLIP-I and DINO); no clipping, no scaling.

    Args:
        generated: ``[N, D]`` L2-normalised embeddings of generated images.
        references: ``[M, D]`` L2-normalised embeddings of the concept's reference images.

    Returns:
        The mean of the ``N × M`` cosines, in [-1, 1].
    """
    _check_embeddings("generated", generated)
    _check_embeddings("references", references)
    cosines = generated.double() @ references.double().T
    return float(cosines.mean().clamp(-1.0, 1.0))


def clipscore(
    image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, *, weight: float = CLIPSCORE_WEIGHT
) -> float:
    """CLIPScore ``mean_i weight · max(cos(image_i, text_i), 0)`` (CLIP-T).

    Args:
        image_embeddings: ``[N, D]`` L2-normalised image embeddings.
        text_embeddings: ``[N, D]`` L2-normalised embeddings of each image's prompt (row ``i`` goes with image ``i``).
        weight: CLIPScore's ``w``.

    Returns:
        A score in ``[0, weight]``.
    """
    _check_embeddings("image_embeddings", image_embeddings)
    _check_embeddings("text_embeddings", text_embeddings)
    if image_embeddings.shape != text_embeddings.shape:
        raise InvalidRequestError(
            f"one prompt embedding per image is needed, got images {tuple(image_embeddings.shape)} "
            f"and prompts {tuple(text_embeddings.shape)}"
        )
    cosines = (image_embeddings.double() * text_embeddings.double()).sum(dim=-1)
    return float((weight * cosines.clamp(0.0, 1.0)).mean())
