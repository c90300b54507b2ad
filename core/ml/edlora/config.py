"""Training options of an ED-LoRA concept; also the public ``options`` schema of ``POST /v1/trainings``.

This module imports no torch: the API validates requests with it. Defaults are Mix-of-Show's shipped ED-LoRA
configs (embedding/text-encoder/UNet learning rates 1e-3/1e-5/1e-4, rank 4, alpha 1.0, noise offset 0.01, batch 4).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EDLoRAConfig(BaseModel):
    """Hyperparameters of one ED-LoRA training run. Frozen; unknown fields are rejected (the API answers 422).

    Derive a variant with ``config.model_copy(update={...})``; nothing mutates a config.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_train_steps: int = Field(500, ge=1, le=5000, description="Optimizer steps to train for.")
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
        0.01,
        ge=0.0,
        le=1.0,
        description=(
            "Weight of the SAM-mask attention separation loss. Accepted and recorded in the adapter now; "
            "the loss itself is added by a later release (training currently uses the masked diffusion loss only)."
        ),
    )
    seed: int = Field(
        0, ge=0, le=2**63 - 1, description="Seed of every random draw in training (same seed, same adapter)."
    )
    batch_size: int = Field(4, ge=1, le=16, description="Images per optimizer step (Mix-of-Show trains at 4).")
    lr_embedding: float = Field(
        1e-3, gt=0.0, le=1.0, description="AdamW learning rate of the concept token embeddings."
    )
    lr_text_encoder: float = Field(1e-5, ge=0.0, le=1.0, description="AdamW learning rate of the text-encoder LoRA.")
    lr_unet: float = Field(1e-4, ge=0.0, le=1.0, description="AdamW learning rate of the UNet LoRA.")
    resolution: int | None = Field(
        None,
        ge=64,
        le=1024,
        multiple_of=8,
        description="Training image side in pixels (multiple of 8); null = the model's native size (512 for SD 1.5).",
    )
    noise_offset: float = Field(
        0.01, ge=0.0, le=1.0, description="Std of a per-channel constant added to the training noise (offset noise)."
    )
