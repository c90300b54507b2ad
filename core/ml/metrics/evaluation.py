"""One concept's evaluation in the Custom Diffusion / Mix-of-Show protocol: CLIP-T, CLIP-I and DINO together.

For a multi-concept image, call ``evaluate_concept_images`` once per concept with that concept's references (the
protocol scores the whole generated image against each concept's reference set; no cropping).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import PIL.Image
import torch

from core.errors import InvalidRequestError
from core.ml.metrics.clip_score import (
    CLIPSCORE_PREFIX,
    DEFAULT_BATCH_SIZE,
    clip_image_embeddings,
    clip_t_from_embeddings,
)
from core.ml.metrics.dino import dino_embeddings
from core.ml.metrics.encoders import EvalEncoders, load_eval_encoders
from core.ml.metrics.similarity import mean_pairwise_cosine
from core.rules import concept_refs

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})


def evaluate_concept_images(
    encoders: EvalEncoders,
    generated: Sequence[PIL.Image.Image],
    references: Sequence[PIL.Image.Image],
    prompts: Sequence[str],
    class_words: Mapping[str, str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """Score generated images of one concept against its reference images.

    Args:
        encoders: from ``load_eval_encoders``.
        generated: the generated images.
        references: the concept's reference (training) images.
        prompts: one prompt per generated image, or one for all, with ``<name>`` references.
        class_words: concept name → class word, used to write the CLIP-T captions.
        batch_size: images per forward pass.

    Returns:
        ``clip_t`` (CLIPScore on the bare class-word caption, [0, 2.5], Custom Diffusion),
        ``clip_t_prefixed`` (the same with ``"A photo depicts "``, Mix-of-Show), ``clip_i`` and ``dino``
        (mean pairwise cosines, [-1, 1]) and ``n_images`` (number of generated images).

    Raises:
        InvalidRequestError: no generated or reference images, or a prompt count that is neither 1 nor
            ``len(generated)``.
        UnknownConceptError: a prompt references a concept missing from ``class_words``.
    """
    for field, images in (("generated", generated), ("references", references)):
        if not images:
            raise InvalidRequestError(f"`{field}` must hold at least one image", field=field)
    clip, dino = encoders.clip, encoders.dino
    # Generated images are embedded once and shared by CLIP-T (both prefixes) and CLIP-I.
    generated_clip = clip_image_embeddings(clip, generated, batch_size=batch_size)
    clip_t, clip_t_prefixed = (
        clip_t_from_embeddings(
            clip, generated_clip, prompts, class_words=class_words, prefix=prefix, batch_size=batch_size
        )
        for prefix in ("", CLIPSCORE_PREFIX)
    )
    scores = {
        "clip_t": clip_t,
        "clip_t_prefixed": clip_t_prefixed,
        "clip_i": mean_pairwise_cosine(generated_clip, clip_image_embeddings(clip, references, batch_size=batch_size)),
        "dino": mean_pairwise_cosine(
            dino_embeddings(dino, generated, batch_size=batch_size),
            dino_embeddings(dino, references, batch_size=batch_size),
        ),
        "n_images": float(len(generated)),
    }
    return scores


def read_images(folder: Path, *, field: str) -> list[PIL.Image.Image]:
    """Every PNG/JPEG/WebP image directly in ``folder``, in file-name order, decoded to RGB.

    Raises:
        InvalidRequestError: the folder does not exist or holds no images (``field`` names the argument).
    """
    if not folder.is_dir():
        raise InvalidRequestError(f"`{field}` {folder} is not a directory", field=field)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidRequestError(
            f"`{field}` {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", field=field
        )
    images = []
    for path in paths:
        with PIL.Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images


def run_concept_eval(
    encoders_root: Path,
    generated_dir: Path,
    references_dir: Path,
    prompt: str,
    class_word: str,
    *,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
    """Load the encoders and score a folder of generated images of one concept (the ``tessera eval`` entry point).

    Args:
        encoders_root: folder with ``clip-vit-b32/`` and ``dino-vits16/`` (see ``core.ml.metrics.encoders``).
        generated_dir: images generated from ``prompt``.
        references_dir: the concept's reference images.
        prompt: the generation prompt; every ``<name>`` in it is scored as ``class_word``.
        class_word: the concept's class word (``"dog"``).
        device: where the encoders run; ``None`` picks CUDA when available, else the CPU.
        batch_size: images per forward pass.

    Returns:
        The scores of ``evaluate_concept_images``.

    Raises:
        ModelLoadError: an encoder folder is missing or does not load.
        InvalidRequestError: a folder is missing or holds no images.
    """
    generated = read_images(generated_dir, field="generated_dir")
    references = read_images(references_dir, field="references_dir")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoders = load_eval_encoders(encoders_root, device=device)
    class_words = dict.fromkeys(concept_refs(prompt), class_word)
    scores = evaluate_concept_images(encoders, generated, references, [prompt], class_words, batch_size=batch_size)
    logger.info("evaluated %d images from %s against %s: %s", len(generated), generated_dir, references_dir, scores)
    return scores
