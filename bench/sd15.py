"""SD 1.5-shaped components with random weights: the same layers, sizes and FLOPs as the real model, no download.

Timing does not depend on weight values, so these stand in for ``runwayml/stable-diffusion-v1-5`` in benchmarks on a
machine without the weights. The tokenizer is the tiny preset's (a small BPE vocabulary): prompts tokenize to a few
ids, padded to 77 like the real one, so the text encoder runs its full 77-token sequence.

``side`` below the real 512 keeps the architecture and scales the work by the pixel count (attention by its square
at the highest resolution), which is how CPU runs stay in minutes; a row measured that way says its size.

The styling stage's parts come the same way (``sd15_styling_weights``: the ViT-H/14 image encoder, a ControlNet
built from the UNet, the plain 4-token IP-Adapter written in h94's file layout), and ``random_edlora`` makes a
concept adapter of the right shapes for any components, so fusion and styling run their real code paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from core.ml.components import PresetOptions, SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.attention import cross_attention_layer_names
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, lora_scope, lora_state_dict
from core.ml.styling.control import ControlType
from core.ml.styling.weights import IP_ADAPTER_FOLDER, IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS, StylingWeights
from core.ml.tiny import build_tiny_tokenizer, tiny_scheduler_config

SD15_SAMPLE_SIZE = 64  # latent side of the real model (512 px)
SD15_VOCAB = 49408  # CLIP's vocabulary: the embedding table's size (its memory), the tiny ids index into it


def sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet (860 M parameters): diffusers' defaults are its configuration, with 768-wide text."""
    return UNet2DConditionModel(sample_size=SD15_SAMPLE_SIZE, cross_attention_dim=768, attention_head_dim=8)


def sd15_vae() -> AutoencoderKL:
    """SD 1.5's VAE (84 M parameters)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )


def sd15_text_encoder(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextModel:
    """CLIP ViT-L/14's text tower (123 M parameters) over ``vocab_size`` tokens."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        projection_dim=768,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return CLIPTextModel(config)


def sd15_components(
    workdir: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> SDComponents:
    """SD 1.5-shaped ``SDComponents`` with random weights (seeded), frozen and in eval mode, on ``device``.

    ``workdir`` holds the tokenizer files. ``default_resolution`` is 512, as for the real model.
    """
    tokenizer = build_tiny_tokenizer(workdir)
    tokenizer.model_max_length = 77
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = (
            sd15_text_encoder(max(SD15_VOCAB, len(tokenizer)), tokenizer.bos_token_id, tokenizer.eos_token_id),
            sd15_vae(),
            sd15_unet(),
        )
    for part in parts:
        part.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:  # built in float32; casting a float32 model to itself only warns
            part.to(dtype)
    text_encoder, vae, unet = parts
    schedule = DDPMScheduler.from_config(tiny_scheduler_config())
    sampler = DPMSolverMultistepScheduler.from_config(schedule.config, algorithm_type="dpmsolver++")
    return SDComponents(
        preset="sd15-random",
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        scheduler=sampler,
        device=torch.device(device),
        dtype=dtype,
        options=PresetOptions(),
    )


# ---- the styling stage: image encoder, ControlNet, IP-Adapter --------------------------------------------------

SD15_IMAGE_EMBED_DIM = 1024  # OpenCLIP ViT-H/14's projection: what h94's plain SD 1.5 IP-Adapter reads


def sd15_image_encoder() -> CLIPVisionModelWithProjection:
    """OpenCLIP ViT-H/14's vision tower with projection (632 M parameters), the encoder of the SD 1.5 IP-Adapter."""
    config = CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=SD15_IMAGE_EMBED_DIM,
        hidden_act="gelu",
    )
    return CLIPVisionModelWithProjection(config)


def sd15_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A ControlNet 1.1-shaped model (361 M parameters for SD 1.5) built from ``unet``'s encoder half."""
    return ControlNetModel.from_unet(unet)


def ip_adapter_state(unet: UNet2DConditionModel, image_embed_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A plain (4-token) IP-Adapter for ``unet`` with random weights, in h94's file layout.

    Keys: ``image_proj.*`` (the image-embedding projection) and ``ip_adapter.{k}.to_{k,v}_ip.weight`` with ``k`` =
    1, 3, 5, ... numbering the cross-attention processors in ``unet.attn_processors`` order, as diffusers' loader
    reads them. Tensors are float32 on CPU, built by the classes diffusers loads them into.
    """
    cross_dim = int(unet.config.cross_attention_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projection = ImageProjection(
            image_embed_dim=image_embed_dim, cross_attention_dim=cross_dim, num_image_text_embeds=4
        )
        # diffusers names the projection `image_embeds`; the h94 files call it `proj` (the loader renames it back).
        tensors = {f"image_proj.{k.replace('image_embeds.', 'proj.')}": v for k, v in projection.state_dict().items()}
        key_id = 1
        for name in unet.attn_processors:
            if name.endswith("attn1.processor"):
                continue
            hidden = int(unet.get_submodule(name.removesuffix(".processor")).to_q.out_features)
            processor = IPAdapterAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=cross_dim, num_tokens=4)
            tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = processor.to_k_ip[0].weight
            tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = processor.to_v_ip[0].weight
            key_id += 2
    return {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}


def write_ip_adapter(unet: UNet2DConditionModel, folder: Path, image_embed_dim: int, seed: int = 0) -> Path:
    """Write a random IP-Adapter for ``unet`` where ``StylingWeights(folder=folder)`` looks for it.

    Returns:
        ``folder / "ip-adapter"``, the root ``load_ip_adapter`` reads (subfolder ``models``).
    """
    models = folder / IP_ADAPTER_FOLDER / IP_ADAPTER_SUBFOLDER
    models.mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state(unet, image_embed_dim, seed), str(models / IP_ADAPTER_WEIGHTS))
    return folder / IP_ADAPTER_FOLDER


def sd15_styling_weights(
    unet: UNet2DConditionModel,
    folder: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    control_types: Sequence[ControlType] = ("canny",),
    seed: int = 0,
) -> StylingWeights:
    """SD 1.5-shaped styling weights with random values for ``core.ml.styling.pipeline.style_images``.

    The IP-Adapter file is written under ``folder`` (``style_images`` loads it from disk each call, as the service
    does); the ViT-H/14 image encoder and one ControlNet per ``control_types`` are built in memory and handed to
    ``StylingWeights`` already loaded (writing 1.4 GB per ControlNet to read it back would time the disk).
    """
    write_ip_adapter(unet, folder, SD15_IMAGE_EMBED_DIM, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = sd15_image_encoder()
        controlnets = {kind: sd15_controlnet(unet) for kind in control_types}
    torch_device = torch.device(device)
    for model in (encoder, *controlnets.values()):
        model.to(torch_device).eval().requires_grad_(False)
        if dtype != torch.float32:
            model.to(dtype)
    side = int(encoder.config.image_size)
    return StylingWeights(
        folder=folder,
        image_encoder=encoder,
        feature_extractor=CLIPImageProcessor(size=side, crop_size=side),
        device=torch_device,
        dtype=dtype,
        _controlnets={str(kind): model for kind, model in controlnets.items()},
    )


# ---- concept adapters ---------------------------------------------------------------------------------------------


def random_edlora(
    components: SDComponents, name: str, class_word: str, *, rank: int = 4, seed: int = 0
) -> EDLoRAWeights:
    """An ED-LoRA adapter of the right shapes for ``components`` with random weights (a trained one costs the same).

    LoRA ``A`` is peft's initialisation, ``B`` normal with std 0.01 (peft starts ``B`` at zero, which would make
    the adapter a no-op); the layer-wise token embeddings are normal with the spread of the text encoder's own
    token embeddings. ``components`` are left as they were.
    """
    text_encoder, unet = components.text_encoder, components.unet
    table = text_encoder.get_input_embeddings().weight
    num_layers = len(cross_attention_layer_names(unet))
    adapter = f"bench_random_{name}"
    with torch.random.fork_rng(devices=[]), lora_scope(text_encoder, unet):
        torch.manual_seed(seed)
        states = []
        for model, targets in ((text_encoder, TEXT_ENCODER_TARGETS), (unet, UNET_TARGETS)):
            add_lora(model, adapter, rank=rank, targets=targets, multiplier=1.0)
            state = lora_state_dict(model, adapter)
            for key, value in state.items():
                if ".lora_B." in key:
                    torch.nn.init.normal_(value, std=0.01)
            states.append({k: v.float() for k, v in state.items()})
        embeddings = torch.randn(2, num_layers, table.shape[1]) * float(table.float().std())
    return EDLoRAWeights(
        concept_name=name,
        class_word=class_word,
        token_embeddings=embeddings,
        text_encoder_lora=states[0],
        unet_lora=states[1],
        rank=rank,
        alpha=1.0,
        base_model_id=components.base_model_id,
    )
