"""DINO similarity: mean pairwise cosine of DINO ViT-S/16 CLS features, generated against reference images.

DINO (self-supervised, no text) separates instances of the same class better than CLIP does, which is why
DreamBooth and Custom Diffusion report it beside CLIP-I. The model is DINO v1 (``facebook/dino-vits16``, a plain
``ViTModel``); its feature is the final-layer-normalised CLS token, as ``torch.hub``'s ``dino_vits16`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch

from core.errors import InvalidRequestError
from core.ml.metrics.encoders import DINOEncoder, model_device_dtype
from core.ml.metrics.similarity import mean_pairwise_cosine

DEFAULT_BATCH_SIZE = 32


@torch.inference_mode()
def dino_embeddings(
    encoder: DINOEncoder, images: Sequence[PIL.Image.Image], *, batch_size: int = DEFAULT_BATCH_SIZE
) -> torch.Tensor:
    """CLS features of DINO, L2-normalised.

    Returns:
        ``[N, D]`` float32 on the CPU (``D`` = 384 for ViT-S/16).

    Raises:
        InvalidRequestError: no images, or ``batch_size`` below 1.
    """
    if not images:
        raise InvalidRequestError("`images` must hold at least one image", field="images")
    if batch_size < 1:
        raise InvalidRequestError(f"`batch_size` must be at least 1, got {batch_size}", field="batch_size")
    device, dtype = model_device_dtype(encoder.model)
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = encoder.transform(images[start : start + batch_size]).to(device=device, dtype=dtype)
        hidden = encoder.model(pixel_values=pixels).last_hidden_state
        chunks.append(hidden[:, 0].float().cpu())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def dino_score(
    encoder: DINOEncoder,
    generated: Sequence[PIL.Image.Image],
    references: Sequence[PIL.Image.Image],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """DINO: mean cosine of DINO CLS features over all (generated, reference) pairs.

    Returns:
        A score in [-1, 1] (identical images give 1; published single-concept values are around 0.5).

    Raises:
        InvalidRequestError: ``generated`` or ``references`` is empty.
    """
    for field, images in (("generated", generated), ("references", references)):
        if not images:
            raise InvalidRequestError(f"`{field}` must hold at least one image", field=field)
    return mean_pairwise_cosine(
        dino_embeddings(encoder, generated, batch_size=batch_size),
        dino_embeddings(encoder, references, batch_size=batch_size),
    )
