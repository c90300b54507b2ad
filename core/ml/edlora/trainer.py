"""ED-LoRA training (Mix-of-Show ``trainer_edlora.py``, restated): learn one concept from a few images.

What is learned: two new words per concept (``V_rand``, ``V_class``), each with one embedding row per UNet
cross-attention layer, plus LoRA on the text encoder's and the UNet's attention projections. The shared components
are never modified: training runs on deep copies of the text encoder and UNet (the worker caches the originals
across jobs), and everything random comes from one ``torch.Generator`` seeded with ``config.seed``.

With masks, the diffusion loss is area-normalised inside the concept mask (``mask_background_weight`` lets the
background count a little), and when ``separation_loss_weight`` > 0 the concept tokens' cross-attention is captured
(``core.ml.edlora.capture``) and the separation loss (``core.ml.edlora.separation``) is added.

Speed (``bench/training_throughput.py`` compares a plain loop of the same training): views are VAE-encoded once and
each step samples from the cached latent distribution; attention is fused SDPA except in the layers captured for the
separation loss (they need explicit probabilities); AdamW is fused; on CUDA the UNet runs channels-last and, with
float32 components, the model passes autocast to bfloat16 (``config.mixed_precision``). ``config.
gradient_checkpointing`` trades compute for activation memory.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import PIL.Image
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from core.errors import InvalidRequestError, PipelineError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights, TrainingReport, loss_curve
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.captions import caption_templates
from core.ml.edlora.capture import ConceptAttentionStore, capture_concept_attention, concept_columns
from core.ml.edlora.embeddings import encode_layerwise, init_concept_embeddings
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, lora_parameters, lora_state_dict
from core.ml.edlora.separation import SeparationMasks, separation_loss, timestep_weight
from core.ml.edlora.training_data import (
    batch_prompts,
    batches,
    check_inputs,
    examples_with_other_objects,
    loss_weight,
    other_term_state,
    prepare_data,
)
from core.progress import Progress, StepCallback, no_progress
from core.training_options import EDLoRAConfig

logger = logging.getLogger(__name__)

TRAIN_ADAPTER = "edlora"
ADAMW_WEIGHT_DECAY = 0.01
_FUSED_ADAMW_DEVICES = frozenset({"cpu", "cuda"})
"""Devices where AdamW runs its fused kernel: one call for every parameter instead of ~10 small ops per tensor
(on CPU 0.8 ms instead of 4.6 ms per step for the shapes preset's 185 tensors; results within 1e-8 per step)."""
_CHANNELS_LAST_DEVICES = frozenset({"cuda"})
"""Devices where the UNet copy trains in channels-last memory format (cuDNN's preferred layout, no transposes)."""


def _diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """ε (or v) MSE ``[B, C, h, w]`` → scalar; with a mask ``[B, 1, h, w]``, normalised by each image's mask area."""
    error = (prediction.float() - target.float()) ** 2
    if mask is None:
        return error.mean()
    weight = mask.expand_as(error)
    per_image = (error * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
    return per_image.mean()


def autocast_dtype(config: EDLoRAConfig, components: SDComponents) -> torch.dtype | None:
    """The dtype ``config.mixed_precision`` autocasts the text-encoder and UNet passes to; None = no autocast.

    ``auto`` picks bfloat16 only on a CUDA GPU with bfloat16 support and float32 components: float16 components
    already compute in half precision (with a gradient scaler), and on CPU float32 stays exact and is not slower.
    """
    if config.mixed_precision == "bf16":
        return torch.bfloat16
    if (
        config.mixed_precision == "auto"
        and components.device.type == "cuda"
        and components.dtype == torch.float32
        and torch.cuda.is_bf16_supported()
    ):
        return torch.bfloat16
    return None


def _prefer_sdpa(unet: UNet2DConditionModel) -> None:
    """Give every plain-attention layer of the (private) ``unet`` the fused SDPA processor; others are kept.

    diffusers installs ``AttnProcessor2_0`` by default; this makes sure a copy of components whose processors were
    set to the explicit ``AttnProcessor`` trains with fused attention too. Layers captured for the separation loss
    get explicit attention later, from ``capture_concept_attention``.
    """
    processors = unet.attn_processors
    if any(type(p) is AttnProcessor for p in processors.values()):
        unet.set_attn_processor(
            {name: AttnProcessor2_0() if type(p) is AttnProcessor else p for name, p in processors.items()}
        )


def train_edlora(
    components: SDComponents,
    images: Sequence[PIL.Image.Image],
    *,
    concept_name: str,
    class_word: str,
    config: EDLoRAConfig,
    masks: Sequence[PIL.Image.Image] | None = None,
    other_masks: Sequence[PIL.Image.Image | None] | None = None,
    captions: Sequence[str | None] | None = None,
    on_step: StepCallback = no_progress,
) -> EDLoRAWeights:
    """Train one ED-LoRA concept and return its weights; ``components`` are left exactly as they were.

    Each step: sample a batch of training latents, noise them at uniform random timesteps (plus offset noise),
    encode the batch's captions once per cross-attention layer (``[B, n_layers, seq, dim]``) and regress the
    noise (or v) with the UNet; the loss is masked and area-normalised when ``masks`` are given, plus
    ``separation_loss_weight`` times the attention separation loss (needs ``masks``). AdamW with three parameter
    groups (embeddings, text-encoder LoRA, UNet LoRA), linear decay to 0, no warm-up; the embeddings freeze once
    their mean norm reaches ``embedding_norm_threshold``.

    Args:
        images: the concept's photos (any size; resized on the short side and centre-cropped to the resolution).
        concept_name: the name prompts will use (``<concept_name>``).
        class_word: one word for the concept's class ("dog"); initialises ``V_class``.
        config: hyperparameters (``config.resolution`` None = the model's native size).
        masks: optional, one L-mode mask per image, white = concept (resized like its image, then to latent size).
        other_masks: optional, per image the other objects' union (white) or None; used by the separation term.
            Photos of the concept alone have none; ``core.ml.edlora.composites`` makes examples that do.
        captions: optional, one per image, with ``<concept>`` where the concept goes; default (None, or a None
            entry for that image): a random template of ``config.concept_type`` each step.
        on_step: called with ``Progress("training", step, max_train_steps)`` after every optimizer step; raise
            ``JobCanceledError`` inside it to stop (it propagates).

    Returns:
        ``EDLoRAWeights`` with ``token_embeddings`` ``[2, n_layers, hidden]`` and the two LoRA state dicts (float32).
        ``training_options`` records the config and what training saw, among it ``examples_with_other_objects``,
        ``attention_on_other_objects_during_training`` and ``separation_other_term``: ``"active"``,
        ``"no_other_objects"`` (the loss is on but no example has other objects, so its other-object term is
        identically 0) or ``"off"``.

    Raises:
        InvalidRequestError: bad images/masks/captions/names (``field`` names which).
        PipelineError: the loss became NaN or infinite.
    """
    # 1. Check inputs and prepare data (the only use of the shared VAE, read-only).
    check_inputs(images, concept_name, class_word, masks, captions, other_masks)
    resolution = config.resolution or components.default_resolution
    generator = torch.Generator().manual_seed(config.seed)
    data = prepare_data(components, images, masks, other_masks, captions, concept_name, resolution, config, generator)
    device, total = components.device, config.max_train_steps
    templates = caption_templates(config.concept_type)
    separating = config.separation_loss_weight > 0 and data.masks is not None
    if config.separation_loss_weight > 0 and data.masks is None:
        logger.info("separation loss skipped: it needs masks and none were given")
    with_others = examples_with_other_objects(data, config.augmentation_views)
    other_term = other_term_state(separating, config, with_others)
    if other_term == "no_other_objects":
        logger.warning(
            "the separation loss's other-object term has nothing to act on: no training example has other objects' "
            "masks (train with composites, core.ml.edlora.composites, to give it some)"
        )
    store = ConceptAttentionStore()

    # 2. Private copies of the trained models; the shared ones are never touched.
    text_encoder = copy.deepcopy(components.text_encoder).requires_grad_(False)
    unet = copy.deepcopy(components.unet).requires_grad_(False)
    _prefer_sdpa(unet)
    memory_format = torch.channels_last if device.type in _CHANNELS_LAST_DEVICES else torch.contiguous_format
    unet.to(memory_format=memory_format)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing: the inputs of the frozen layers need not require grad for LoRA to get one.
        unet.enable_gradient_checkpointing()
        text_encoder.activation_checkpointing_enable()
    amp_dtype = autocast_dtype(config, components)
    with (
        layerwise_cross_attention(unet) as num_layers,
        capture_concept_attention(
            unet, store, config.separation_downsample_factors if separating else ()
        ) as captured_layers,
    ):
        init = init_concept_embeddings(components.tokenizer, text_encoder, class_word, num_layers, generator)
        embeddings = torch.nn.Parameter(init.to(device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # LoRA A matrices are Kaiming-initialised from the global RNG
            add_lora(
                text_encoder, TRAIN_ADAPTER, rank=config.rank, targets=TEXT_ENCODER_TARGETS, multiplier=config.alpha
            )
            add_lora(unet, TRAIN_ADAPTER, rank=config.rank, targets=UNET_TARGETS, multiplier=config.alpha)
        text_encoder.train()
        unet.train()

        # 3. Optimiser: three groups, linear decay to 0.
        optimizer = torch.optim.AdamW(
            [
                {"params": [embeddings], "lr": config.lr_embedding},
                {"params": lora_parameters(text_encoder, TRAIN_ADAPTER), "lr": config.lr_text_encoder},
                {"params": lora_parameters(unet, TRAIN_ADAPTER), "lr": config.lr_unet},
            ],
            betas=(0.9, 0.999),
            weight_decay=ADAMW_WEIGHT_DECAY,
            fused=device.type in _FUSED_ADAMW_DEVICES,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
        scaler = torch.amp.GradScaler(device.type, enabled=components.dtype == torch.float16)
        noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        scaling_factor = float(components.vae.config.scaling_factor)
        num_timesteps = int(noise_scheduler.config.num_train_timesteps)
        order = batches(len(data.source), config.batch_size, generator)
        embeddings_frozen = False
        loss_value = math.nan
        losses: list[float] = []
        in_mask_sums: dict[int, float] = {}
        on_others_sums: dict[int, float] = {}
        in_mask_counts: dict[int, int] = {}
        if separating and not captured_layers:
            raise InvalidRequestError(
                f"separation_downsample_factors {config.separation_downsample_factors} match no cross-attention "
                "layer of this model",
                field="options.separation_downsample_factors",
            )

        # 4. Denoising-loss steps.
        for step in range(1, total + 1):
            index = next(order)
            mean, std = data.latent_mean[index], data.latent_std[index]
            latents = (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor  # [B, 4, h, w]
            noise = torch.randn(latents.shape, generator=generator)
            if config.noise_offset:
                noise += config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
            timesteps = torch.randint(0, num_timesteps, (len(index),), generator=generator)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            prompts = batch_prompts(data, index, templates, concept_name, generator)

            store.clear()
            if separating:
                store.columns, present = concept_columns(components.tokenizer, prompts, concept_name)
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                states = encode_layerwise(
                    components.tokenizer, text_encoder, prompts, {concept_name: embeddings}, num_layers
                )
                sample = noisy.to(device, components.dtype)
                if memory_format == torch.channels_last:
                    # Only then: on CPU the latents keep the strides the VAE gave them, as before (same rounding).
                    sample = sample.contiguous(memory_format=memory_format)
                prediction = unet(sample, timesteps.to(device), encoder_hidden_states=states).sample
            weight = loss_weight(data, index, config.mask_background_weight)
            loss = _diffusion_loss(prediction, target.to(device), None if weight is None else weight.to(device))
            if separating and data.regions is not None and data.dilated is not None and data.others is not None:
                masks_b = SeparationMasks(data.regions[index], data.dilated[index], data.others[index])
                weights_t = timestep_weight(timesteps, config, num_timesteps) * present
                result = separation_loss(store.by_resolution(), masks_b, weights=weights_t.to(device), config=config)
                loss = loss + config.separation_loss_weight * result.loss.to(loss.device)
                for side, share in result.in_mask.items():
                    in_mask_sums[side] = in_mask_sums.get(side, 0.0) + float(share.mean())
                    on_others_sums[side] = on_others_sums.get(side, 0.0) + float(result.on_others[side].mean())
                    in_mask_counts[side] = in_mask_counts.get(side, 0) + 1
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                raise PipelineError(f"ED-LoRA training diverged at step {step}: loss is {loss_value}")
            losses.append(loss_value)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if embeddings_frozen:
                embeddings.grad = None  # AdamW skips parameters without a gradient
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            norm = float(embeddings.detach().norm(dim=-1).mean())
            threshold = config.embedding_norm_threshold
            if not embeddings_frozen and threshold is not None and norm >= threshold:
                embeddings_frozen = True
                logger.info("concept embeddings reached mean norm %.3f at step %d; frozen from now on", norm, step)
            logger.debug("step %d/%d loss %.5f embedding norm %.3f", step, total, loss_value, norm)
            on_step(Progress("training", step, total))

        # 5. Collect the learned weights (CPU, float32) and what the training saw.
        report = TrainingReport(
            attention_in_mask={
                str(side): round(in_mask_sums[side] / in_mask_counts[side], 4) for side in in_mask_sums
            },
            # Mean share of the concept words' attention on other objects: what the separation term pushes down;
            # exactly 0 when no example has other objects (then that term had nothing to act on).
            attention_on_other_objects={
                str(side): round(on_others_sums[side] / in_mask_counts[side], 6) for side in on_others_sums
            },
            examples_with_other_objects=with_others,
            separation_other_term=other_term,
            loss_curve=loss_curve(losses),
        )
        return EDLoRAWeights(
            concept_name=concept_name,
            class_word=class_word,
            token_embeddings=embeddings.detach().float().cpu().clone(),
            text_encoder_lora={k: v.float() for k, v in lora_state_dict(text_encoder, TRAIN_ADAPTER).items()},
            unet_lora={k: v.float() for k, v in lora_state_dict(unet, TRAIN_ADAPTER).items()},
            rank=config.rank,
            alpha=config.alpha,
            base_model_id=components.base_model_id,
            training_options={
                **config.model_dump(mode="json"),
                "resolution": resolution,
                "num_images": len(images),
                "masked_loss": masks is not None,
                "separation_loss": separating,
                # The report's facts, kept with the adapter for provenance.
                "attention_in_mask_during_training": report.attention_in_mask,
                "attention_on_other_objects_during_training": report.attention_on_other_objects,
                "examples_with_other_objects": report.examples_with_other_objects,
                "separation_other_term": report.separation_other_term,
                "num_layer_embeddings": num_layers,
                "final_loss": loss_value,
            },
            report=report,
        )
