"""``train_shapes`` end to end at toy size: it writes a preset folder the stock pipeline can load."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from core.ml.shapes import world
from core.ml.shapes.evaluation import load_preset_pipeline
from core.ml.shapes.training import (
    ShapesTrainingConfig,
    build_vae,
    latent_drift,
    refine_preset_vae,
    refine_vae_anchored,
    train_shapes,
)

TOY = ShapesTrainingConfig(
    vae_steps=2,
    decoder_steps=1,
    anchor_steps=1,
    vae_batch_size=4,
    num_images=16,
    unet_steps=2,
    batch_size=4,
    warmup_steps=1,
    checkpoint_every=1,
    unet_channels=(32, 32, 32),
    vae_channels=(16, 16, 16, 16),
    text_hidden_size=32,
    text_layers=1,
)


def test_train_shapes_writes_a_loadable_preset(tmp_path: Path) -> None:
    steps: list[tuple[str, int]] = []

    report = train_shapes(
        tmp_path / "preset",
        config=TOY,
        work_dir=tmp_path / "work",
        on_step=lambda s, i, _n, _loss: steps.append((s, i)),
    )

    assert steps == [("vae", 1), ("vae", 2), ("vae_decoder", 1), ("vae_anchored", 1), ("unet", 1), ("unet", 2)]
    assert report.unet_steps_done == 2 and report.scaling_factor > 0
    assert (tmp_path / "work" / "checkpoint" / "unet" / "config.json").is_file()
    pipeline = load_preset_pipeline(tmp_path / "preset")
    assert isinstance(pipeline, StableDiffusionPipeline)
    assert isinstance(pipeline.scheduler, DPMSolverMultistepScheduler)
    image = pipeline("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="`unet_steps`"):
        dataclasses.replace(TOY, unet_steps=0)
    with pytest.raises(ValueError, match="`caption_dropout`"):
        dataclasses.replace(TOY, caption_dropout=1.0)
    with pytest.raises(ValueError, match="`anchor_striped_share`"):
        dataclasses.replace(TOY, anchor_striped_share=1.5)


@pytest.mark.slow
def test_reruns_reuse_the_trained_vae(tmp_path: Path) -> None:
    train_shapes(tmp_path / "a", config=TOY, work_dir=tmp_path / "work", on_step=lambda *_: None)
    steps: list[str] = []

    train_shapes(tmp_path / "b", config=TOY, work_dir=tmp_path / "work", on_step=lambda s, *_: steps.append(s))

    assert "vae" not in steps
    assert torch.equal(
        load_preset_pipeline(tmp_path / "a").vae.encoder.conv_in.weight,
        load_preset_pipeline(tmp_path / "b").vae.encoder.conv_in.weight,
    )


def test_the_anchor_keeps_base_latents_where_they_were() -> None:
    """Stage 1c moves base-world latents far less with its anchor than without (the UNet depends on them)."""
    torch.manual_seed(0)
    start = build_vae(TOY).train(False)
    images = world.draw_base_dataset(16, 3)[0]
    drifts = {}
    for weight in (0.0, 100.0):
        vae = build_vae(TOY)
        vae.load_state_dict(start.state_dict())
        config = dataclasses.replace(TOY, anchor_steps=6, anchor_lr=3e-3, anchor_weight=weight)
        refine_vae_anchored(vae, config)
        drifts[weight] = latent_drift(start, vae, images)
    assert drifts[0.0] > 0 and drifts[100.0] < 0.5 * drifts[0.0], drifts


def test_refining_a_preset_vae_keeps_its_scaling_factor_and_dtype(tmp_path: Path) -> None:
    train_shapes(tmp_path / "preset", config=TOY, work_dir=tmp_path / "work", on_step=lambda *_: None)
    before = load_preset_pipeline(tmp_path / "preset").vae

    drift = refine_preset_vae(tmp_path / "preset", dataclasses.replace(TOY, anchor_steps=2))

    after = load_preset_pipeline(tmp_path / "preset").vae
    assert drift > 0
    assert after.config.scaling_factor == before.config.scaling_factor
    assert not torch.equal(after.encoder.conv_in.weight, before.encoder.conv_in.weight)
    stored = (tmp_path / "preset" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert b'"F16"' in stored[:20000]
    # The config names the preset, not this machine's path.
    assert json.loads((tmp_path / "preset" / "vae" / "config.json").read_text())["_name_or_path"] == "preset/vae"
