"""Training options of an ED-LoRA concept; also the public ``options`` schema of ``POST /v1/trainings``.

This module imports no torch and nothing of ``core.ml``: the API validates requests with it, and the trainer
(``core.ml.edlora.trainer``) runs with it. Defaults are Mix-of-Show's shipped ED-LoRA
configs (embedding/text-encoder/UNet learning rates 1e-3/1e-5/1e-4, rank 4, alpha 1.0, noise offset 0.01, batch 4,
embedding-norm freeze at 0.55). The attention separation loss (``core.ml.edlora.separation``) defaults to the
configuration the ablation in ``bench/separation_ablation.py`` found best; its terms are::

    L = L_diff + separation_loss_weight · mean_{r, t}( w(t) · [leak + fill·[class word] + other·sep] )

where ``leak`` is the concept tokens' attention mass outside the dilated concept mask, ``sep`` the mass on other
objects' masks and ``fill`` a Break-A-Scene-style MSE between the class word's max-normalised map and the mask.

Ablation behind the defaults (``bench/separation_ablation.py``, 300 steps, 2 seeds x 16 held-out images, on an
intermediate checkpoint of the shapes preset): attention-in-mask 0.083 without the loss; 0.197 at lambda 0.1;
0.234 at lambda 1 (chosen); gating t < 800 0.231 and linear t-weighting 0.227 (within noise of uniform, so
uniform); adding the fill term 0.205 (so fill off). On the shipped shapes preset: 0.075 without, 0.257 with the
defaults. Leak and separation terms are bounded in [0, 1], which is why lambda 1 is not excessive next to the
diffusion loss; the references' 0.01 is for their MSE form. Tuned on the toy model only, not on SD 1.5.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.rules import MAX_SEED, MAX_SIDE, MAX_TRAINING_STEPS, MIN_SIDE, SIDE_MULTIPLE

ConceptType = Literal["object", "human", "style"]
TimestepWeighting = Literal["uniform", "linear"]
DownsampleFactor = Literal[1, 2, 4, 8, 16]
MixedPrecision = Literal["auto", "no", "bf16"]


class EDLoRAConfig(BaseModel):
    """Hyperparameters of one ED-LoRA training run. Frozen; unknown fields are rejected (the API answers 422).

    Derive a variant with ``config.model_copy(update={...})``; nothing mutates a config.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_train_steps: int = Field(500, ge=1, le=MAX_TRAINING_STEPS, description="Optimizer steps to train for.")
    rank: int = Field(4, ge=1, le=128, description="LoRA rank r of every adapted linear layer.")
    alpha: float = Field(
        1.0,
        gt=0.0,
        le=16.0,
        description=(
            "LoRA multiplier as in Mix-of-Show: y = Wx + alpha·B(A(x)), applied directly, not scaled by 1/rank "
            "(peft is configured with lora_alpha = rank·alpha so its lora_alpha/r scaling equals alpha)."
        ),
    )
    separation_loss_weight: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description=(
            "Weight (lambda) of the attention separation loss; 0 turns attention capture off. Needs masks "
            "(uploaded or computed by the service)."
        ),
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of every random draw in training (same seed, same adapter)."
    )
    batch_size: int = Field(4, ge=1, le=16, description="Images per optimizer step (Mix-of-Show trains at 4).")
    lr_embedding: float = Field(
        1e-3, gt=0.0, le=1.0, description="AdamW learning rate of the concept token embeddings."
    )
    lr_text_encoder: float = Field(1e-5, ge=0.0, le=1.0, description="AdamW learning rate of the text-encoder LoRA.")
    lr_unet: float = Field(1e-4, ge=0.0, le=1.0, description="AdamW learning rate of the UNet LoRA.")
    resolution: int | None = Field(
        None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=SIDE_MULTIPLE,
        description="Training image side in pixels (multiple of 8); null = the model's native size (512 for SD 1.5).",
    )
    noise_offset: float = Field(
        0.01, ge=0.0, le=1.0, description="Std of a per-channel constant added to the training noise (offset noise)."
    )
    concept_type: ConceptType = Field(
        "object",
        description=(
            "Which default caption templates wrap the concept when no captions are given (Mix-of-Show EnhanceText): "
            "object, human or style."
        ),
    )
    embedding_norm_threshold: float | None = Field(
        0.55,
        gt=0.0,
        le=100.0,
        description=(
            "Freeze the concept embeddings once their mean L2 norm reaches this (Mix-of-Show); null = never freeze."
        ),
    )
    augmentation_views: int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "Extra randomly resized/cropped/padded views per image (Mix-of-Show's resize-crop-pad), each with its "
            "mask carried along; encoded once before training. Padded pixels never count in any loss."
        ),
    )
    mask_background_weight: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Weight of background pixels in the masked diffusion loss (0 = concept pixels only).",
    )
    separation_leak_weight: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Weight of the leakage term: concept-token attention mass outside the dilated concept mask.",
    )
    separation_fill_weight: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Weight of the fill term: MSE between the class word's max-normalised attention map and the mask.",
    )
    separation_other_weight: float = Field(
        2.0,
        ge=0.0,
        le=10.0,
        description=(
            "Weight of the separation term: concept-token attention mass on other objects' masks. It acts only on "
            "examples that show other objects: those the segmenter finds in the photos, or the training request's "
            "composites; the job's diagnostics say whether it had any (separation_other_term)."
        ),
    )
    separation_dilation: float = Field(
        0.03,
        ge=0.0,
        le=0.25,
        description=(
            "Dilation of the concept mask for the leakage term, as a fraction of the image side, so that SAM's "
            "boundary errors are not punished."
        ),
    )
    separation_downsample_factors: tuple[DownsampleFactor, ...] | None = Field(
        None,
        min_length=1,
        description=(
            "Which cross-attention resolutions the loss uses, as downsampling factors from the latent grid "
            "(SD 1.5: 1 = 64x64, 2 = 32x32, 4 = 16x16, 8 = 8x8); null = every resolution the UNet has."
        ),
    )
    separation_max_timestep: int = Field(
        1000,
        ge=1,
        le=1000,
        description="Apply the attention terms only for training timesteps t < this (1000 = all timesteps).",
    )
    separation_timestep_weighting: TimestepWeighting = Field(
        "uniform",
        description="Weight of the attention terms per sample: uniform, or linear = 1 - t/1000 (diffuse maps less).",
    )
    mixed_precision: MixedPrecision = Field(
        "auto",
        description=(
            "Autocast of the text-encoder and UNet passes: auto = bfloat16 on a CUDA GPU that supports it when the "
            "model is loaded in float32 (faster steps, smaller activations), none on CPU; bf16 = bfloat16 on any "
            "device; no = the model's own dtype throughout. Trained weights and optimizer state stay float32."
        ),
    )
    gradient_checkpointing: bool = Field(
        False,
        description=(
            "Recompute the UNet's and text encoder's activations in the backward pass instead of keeping them: less "
            "memory (a larger batch or resolution on a small GPU) for a second forward pass per step (1.5x the step "
            "time of the shapes preset on CPU); the same loss and weights."
        ),
    )
