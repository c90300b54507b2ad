"""The ``tiny`` preset: SD 1.5's classes with tiny random weights, built deterministically from configs.

Images are noise, but every code path (tokenizer, text encoder, VAE, UNet, scheduler, LoRA, attention processors)
is the real one, so CPU tests exercise the same code as a GPU worker. Sizes follow diffusers' pipeline tests
(``get_dummy_components``): 64x64 images, 8x8 latents, a 2-layer 32-wide CLIP text model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

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


# ---- styling weights: IP-Adapter, its image encoder, ControlNets (built on demand beside the preset) ----------------

TINY_IP_ADAPTER_WEIGHTS = "ip-adapter_sd15.safetensors"
TINY_CONTROL_TYPES = ("canny", "softedge", "depth")


def _build_image_encoder() -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    return CLIPVisionModelWithProjection(config)


def _ip_adapter_state(unet: UNet2DConditionModel, image_embed_dim: int) -> dict[str, torch.Tensor]:
    """A plain (4-token) IP-Adapter for ``unet`` in the h94 file layout: ``image_proj.*`` and ``ip_adapter.{k}.*``.

    ``k`` = 1, 3, 5, … numbers the cross-attention processors in ``unet.attn_processors`` order, as the diffusers
    loader reads them. Weights come from the classes diffusers loads them into (``ImageProjection``,
    ``IPAdapterAttnProcessor2_0``), randomly initialised.
    """
    cross_dim = int(unet.config.cross_attention_dim)
    projection = ImageProjection(
        cross_attention_dim=cross_dim, image_embed_dim=image_embed_dim, num_image_text_embeds=4
    )
    # diffusers names the projection `image_embeds`; the h94 files call it `proj` (the loader renames it back).
    tensors = {f"image_proj.{k.replace('image_embeds.', 'proj.')}": v for k, v in projection.state_dict().items()}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        processor = IPAdapterAttnProcessor2_0(
            hidden_size=attention.to_q.out_features, cross_attention_dim=cross_dim, num_tokens=4
        )
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor.to_k_ip[0].weight.detach().clone()
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor.to_v_ip[0].weight.detach().clone()
        key_id += 2
    return {k: v.detach().contiguous() for k, v in tensors.items()}


def _build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    # A real ControlNet starts with zero convolutions (no effect until trained); tiny ones get small random
    # weights there instead so that tests can see the control map reach the UNet.
    for zero_conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(zero_conv.weight, std=0.05)
    return controlnet


def write_tiny_styling(preset_folder: Path) -> None:
    """Build the tiny styling weights into ``preset_folder`` (a finished tiny preset), in sd15's layout.

    Writes ``ip-adapter/models/ip-adapter_sd15.safetensors``, ``ip-adapter/models/image_encoder/`` and
    ``controlnet/{canny,softedge,depth}/``. Each part is built in a temporary sibling and renamed into place, so
    concurrent builders are safe and a finished part is never rewritten. Deterministic, like the preset.
    """
    unet = UNet2DConditionModel.from_pretrained(preset_folder, subfolder="unet", local_files_only=True)
    parts: dict[str, Callable[[Path], None]] = {}

    def ip_adapter(staging: Path) -> None:
        models = staging / "models"
        models.mkdir()
        encoder = _build_image_encoder()
        encoder.save_pretrained(models / "image_encoder")
        state = _ip_adapter_state(unet, int(encoder.config.projection_dim))
        save_file(state, str(models / TINY_IP_ADAPTER_WEIGHTS))

    parts["ip-adapter"] = ip_adapter
    for kind in TINY_CONTROL_TYPES:
        parts[f"controlnet/{kind}"] = lambda staging: _build_controlnet(unet).save_pretrained(staging)
    for seed, (relative, build) in enumerate(parts.items()):
        target = preset_folder / relative
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            staging.chmod(0o755)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(TINY_SEED + 1 + seed)
                build(staging)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("built the tiny styling weights in %s", preset_folder)
