"""``train_shapes`` end to end at toy size: it writes a preset folder the stock pipeline can load."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from tessera_shapes import sampling, world
from tessera_shapes.evaluation import load_preset_pipeline
from tessera_shapes.tokenizer import MAX_LENGTH, write_tokenizer
from tessera_shapes.training import (
    ShapesTrainingConfig,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
    caption_ids,
    harden_vae_decoder,
    latent_drift,
    refine_preset_vae,
    refine_vae_anchored,
    train_shapes,
    warm_start,
)
from tessera_shapes.training.denoiser import _min_snr_weight

TOY = ShapesTrainingConfig(
    vae_steps=2,
    decoder_steps=1,
    anchor_steps=1,
    harden_steps=1,
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

    assert steps == [
        ("vae", 1),
        ("vae", 2),
        ("vae_decoder", 1),
        ("vae_anchored", 1),
        ("vae_harden", 1),
        ("unet", 1),
        ("unet", 2),
    ]
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
    images = sampling.draw_base_dataset(16, 3)[0]
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


def test_the_unet_attends_to_the_text_at_every_level_the_full_grid_included() -> None:
    unet = build_unet(TOY)

    assert set(unet.config.down_block_types) == {"CrossAttnDownBlock2D"}
    assert set(unet.config.up_block_types) == {"CrossAttnUpBlock2D"}


def test_a_warm_start_computes_what_the_old_model_did(tmp_path: Path) -> None:
    train_shapes(tmp_path / "preset", config=TOY, work_dir=tmp_path / "work", on_step=lambda *_: None)
    old = load_preset_pipeline(tmp_path / "preset")
    tokenizer = write_tokenizer(world.VOCABULARY, tmp_path / "tokenizer")
    unet, text_encoder = build_unet(TOY), build_text_encoder(TOY, tokenizer)

    missing = warm_start(unet, text_encoder, tmp_path / "preset")

    assert missing == []  # same architecture: every weight carried over
    x, t, states = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, MAX_LENGTH, 32)
    with torch.no_grad():
        assert torch.allclose(unet(x, t, encoder_hidden_states=states).sample, old.unet(x, t, states).sample)


def test_caption_variants_word_the_same_objects_differently(tmp_path: Path) -> None:
    tokenizer = write_tokenizer(world.VOCABULARY, tmp_path / "tokenizer")
    dataset = sampling.draw_base_dataset(12, seed=1)

    ids = caption_ids(tokenizer, dataset, 4, seed=0)

    assert ids.shape == (12, 4, MAX_LENGTH)
    assert torch.equal(
        ids[:, 0],
        tokenizer(dataset.captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids,
    )
    assert any(len({tuple(v.tolist()) for v in ids[i]}) > 1 for i in range(12))
    assert torch.equal(ids, caption_ids(tokenizer, dataset, 4, seed=0))


def test_min_snr_off_weighs_every_timestep_alike() -> None:
    scheduler = build_scheduler()
    timesteps = torch.tensor([0, 10, 500, 999])

    assert torch.equal(_min_snr_weight(scheduler, timesteps, 0.0), torch.ones(4))
    weighted = _min_snr_weight(scheduler, timesteps, 5.0)
    assert weighted[0] < 0.01 and weighted[-1] == 1.0  # Min-SNR all but ignores the last, detail-setting steps


def test_hardening_trains_the_decoder_and_leaves_the_encoder_alone() -> None:
    vae = build_vae(TOY)
    encoder = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in vae.decoder.state_dict().items()}

    harden_vae_decoder(vae, dataclasses.replace(TOY, harden_steps=2))

    assert all(torch.equal(v, vae.encoder.state_dict()[k]) for k, v in encoder.items())
    assert any(not torch.equal(v, vae.decoder.state_dict()[k]) for k, v in decoder.items())
