"""The ``tiny`` preset: SD 1.5's classes with tiny random weights, built deterministically from configs.

Images are noise, but every code path (tokenizer, text encoder, VAE, UNet, scheduler, LoRA, attention processors)
is the real one, so CPU tests exercise the same code as a GPU worker. Sizes follow diffusers' pipeline tests
(``get_dummy_components``): 64x64 images, 8x8 latents, a 2-layer 32-wide CLIP text model.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

TINY_SEED = 0
TINY_MAX_LENGTH = 32
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Whole-word BPE merges for the words tests and default captions use, so class words are single tokens.
_TINY_WORDS = (
    "a", "an", "the", "of", "on", "in", "and", "with", "photo", "picture", "rendering", "close", "up", "good",
    "clean", "small", "large", "nice", "cool", "bright", "dark", "cropped", "style", "painting", "beach", "dog",
    "cat", "man", "woman", "person", "toy", "teapot", "shape", "circle", "square", "triangle", "red", "green",
    "blue", "yellow", "object", "one", "two", "lowres", "blurry",
)  # fmt: skip


# Adapted from CLIP's simple_tokenizer.bytes_to_unicode (openai/CLIP; transformers==5.23 builds the same alphabet):
# identical mapping, returned sorted by byte.
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to one printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A small deterministic CLIP BPE vocabulary: the byte alphabet, its end-of-word forms, whole-word merges.

    Returns:
        ``(vocab, merges)``: token → id (the two special tokens last) and merge rules as ``"left right"`` lines.
    """
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in _TINY_WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            rule = f"{current} {piece}"
            current += piece
            if rule not in merges:
                merges.append(rule)
                tokens.append(current)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def build_tiny_tokenizer(workdir: Path) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` into ``workdir`` and build a ``CLIPTokenizer`` from them."""
    vocab, merges = tiny_vocab_and_merges()
    vocab_file, merges_file = workdir / "vocab.json", workdir / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=TINY_MAX_LENGTH)
    return tokenizer


def _text_encoder_config(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_LENGTH,
        projection_dim=32,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        layer_norm_eps=1e-5,
    )


def _build_unet() -> UNet2DConditionModel:
    # Mirrors SD 1.5's arrangement at toy size: attention in the high-resolution down block, the mid block and the
    # high-resolution up block (4 cross-attention layers: down 1, mid 1, up 2).
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def _build_vae() -> AutoencoderKL:
    # Four blocks: three 2x downsamplings, the SD scale factor of 8 (64x64 pixels ↔ 8x8 latents).
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


@lru_cache(maxsize=1)
def tiny_scheduler_config() -> dict[str, object]:
    """The SD 1.5 noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps, ε-prediction)."""
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )
    return dict(scheduler.config)


def write_tiny_preset(folder: Path) -> None:
    """Build every tiny component with fixed seeds and ``save_pretrained`` it into ``folder`` (which must exist).

    Writes the standard diffusers layout: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and
    ``model_index.json``. The same code on any machine gives byte-identical weight files.
    """
    tokenizer_dir = folder / "tokenizer"
    tokenizer_dir.mkdir()
    tokenizer = build_tiny_tokenizer(tokenizer_dir)
    tokenizer.save_pretrained(tokenizer_dir)
    bos_id, eos_id = tokenizer.convert_tokens_to_ids([BOS_TOKEN, EOS_TOKEN])

    # Every component starts from the same seed; fork_rng keeps the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), int(bos_id), int(eos_id)))
        text_encoder.save_pretrained(folder / "text_encoder")
        torch.manual_seed(TINY_SEED)
        _build_vae().save_pretrained(folder / "vae")
        torch.manual_seed(TINY_SEED)
        _build_unet().save_pretrained(folder / "unet")
    DDPMScheduler.from_config(tiny_scheduler_config()).save_pretrained(folder / "scheduler")

    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n", encoding="utf-8")
    logger.info("built the tiny preset in %s", folder)
