"""Tiny random evaluation encoders in the real folder layout, so tests exercise the real loaders offline.

CLIP: 32×32 images, 8×8 patches, 2-layer 32-wide vision and text towers, the project's tiny BPE vocabulary
(``core.ml.tiny``). DINO: a 2-layer 32-wide ``ViTModel`` on 32×32 images. Scores from these are meaningless; only
their structure (ranges, identities, batching) is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

from core.ml.metrics.encoders import CLIP_FOLDER, DINO_FOLDER
from core.ml.tiny import BOS_TOKEN, EOS_TOKEN, TINY_MAX_LENGTH, build_tiny_tokenizer

logger = logging.getLogger(__name__)

TINY_EVAL_SEED = 0
TINY_IMAGE_SIZE = 32
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Shared by both towers and the ViT; 37 (not a multiple of 32) catches code that assumes MLP width = 4·hidden.
_TOWER = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}


def _write_clip(folder: Path) -> None:
    folder.mkdir(parents=True)
    tokenizer = build_tiny_tokenizer(folder)
    tokenizer.save_pretrained(folder)
    bos_id, eos_id = (int(i) for i in tokenizer.convert_tokens_to_ids([BOS_TOKEN, EOS_TOKEN]))
    text_config = {
        **_TOWER,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": TINY_MAX_LENGTH,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
    }
    vision_config = {**_TOWER, "image_size": TINY_IMAGE_SIZE, "patch_size": 8}
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)
    torch.manual_seed(TINY_EVAL_SEED)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    processor.save_pretrained(folder)


def _write_dino(folder: Path) -> None:
    folder.mkdir(parents=True)
    config = ViTConfig(**_TOWER, image_size=TINY_IMAGE_SIZE, patch_size=8, qkv_bias=True)
    torch.manual_seed(TINY_EVAL_SEED)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    processor = ViTImageProcessor(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        image_mean=list(_IMAGENET_MEAN),
        image_std=list(_IMAGENET_STD),
    )
    processor.save_pretrained(folder)


def build_tiny_eval_encoders(folder: Path) -> Path:
    """Write tiny random CLIP and DINO encoders into ``folder/clip-vit-b32`` and ``folder/dino-vits16``.

    Args:
        folder: the encoders root to create (may exist, but not its two subfolders).

    Returns:
        ``folder``, ready for ``load_eval_encoders``. The same code gives the same weights on any machine.
    """
    folder.mkdir(parents=True, exist_ok=True)
    # fork_rng keeps the caller's global RNG untouched by the fixed seeds.
    with torch.random.fork_rng(devices=[]):
        _write_clip(folder / CLIP_FOLDER)
        _write_dino(folder / DINO_FOLDER)
    logger.info("built tiny evaluation encoders in %s", folder)
    return folder
