"""The shipped ``shapes`` preset: files, configs and size (fast), and sampled accuracy (slow)."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTokenizer

from core.ml.components import read_preset_options
from tessera_shapes import world
from tessera_shapes.evaluation import ConceptFidelity
from tessera_shapes.training import PRESET_DIR

MAX_PRESET_BYTES = 20 * 1024 * 1024
WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)


def test_preset_has_the_sd15_folder_layout() -> None:
    for name in (
        *WEIGHT_FILES,
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        "scheduler/scheduler_config.json",
        "model_index.json",
        "preset.json",
        "README.md",
    ):
        assert (PRESET_DIR / name).is_file(), name


def test_preset_fits_the_size_budget() -> None:
    total = sum(p.stat().st_size for p in PRESET_DIR.rglob("*") if p.is_file())

    assert total <= MAX_PRESET_BYTES


@pytest.mark.parametrize("path", WEIGHT_FILES[:2])
def test_unet_and_vae_weights_are_fp16_on_disk(path: str) -> None:
    with safe_open(str(PRESET_DIR / path), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_weights_load_as_fp32_by_default() -> None:
    unet = UNet2DConditionModel.from_pretrained(PRESET_DIR, subfolder="unet", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(PRESET_DIR / "text_encoder", local_files_only=True)

    assert unet.dtype == text_encoder.dtype == torch.float32


def test_configs_agree_with_each_other() -> None:
    unet_config = UNet2DConditionModel.load_config(PRESET_DIR, subfolder="unet")
    vae_config = AutoencoderKL.load_config(PRESET_DIR, subfolder="vae")
    text_config = json.loads((PRESET_DIR / "text_encoder" / "config.json").read_text())
    scheduler_config = DDPMScheduler.load_config(PRESET_DIR, subfolder="scheduler")
    preset = json.loads((PRESET_DIR / "preset.json").read_text())

    assert vae_config["latent_channels"] == unet_config["in_channels"] == 4
    assert 2 ** (len(vae_config["block_out_channels"]) - 1) == 8
    assert unet_config["sample_size"] * 8 == preset["resolution"] == 64
    assert unet_config["cross_attention_dim"] == text_config["hidden_size"]
    assert vae_config["scaling_factor"] != pytest.approx(0.18215)  # measured, not SD's
    assert scheduler_config["beta_schedule"] == "scaled_linear"
    assert (scheduler_config["beta_start"], scheduler_config["beta_end"]) == (0.00085, 0.012)
    assert scheduler_config["num_train_timesteps"] == 1000
    assert scheduler_config["prediction_type"] == "epsilon"
    assert preset["name"] == "shapes"
    assert {c["name"] for c in preset["held_out_concepts"]} == {c.name for c in world.HELD_OUT_CONCEPTS}
    # The 8x8 grid is too coarse for Concept Conductor's k-means masks (see training/preset.py).
    assert read_preset_options(PRESET_DIR).conductor_refines_masks is False
    # Injecting only in the up blocks left the base path's class words in charge (filled circles for rings).
    assert read_preset_options(PRESET_DIR).conductor_merge_layers == "all"
    # One-object region prompts drew one object where a pair was asked for (regional binding 0.12 vs 0.46 over two
    # seed sets, preset README).
    assert read_preset_options(PRESET_DIR).regional_region_prompt == "every_slot"


def test_tokenizer_loads_offline_and_has_room_for_concepts() -> None:
    tokenizer = CLIPTokenizer.from_pretrained(PRESET_DIR / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(PRESET_DIR / "text_encoder", local_files_only=True)

    for word in world.VOCABULARY:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    before = len(tokenizer)
    tokenizer.add_tokens(["<purple_star>", "<orange_ring>"])
    assert len(tokenizer) == before + 2
    assert text_encoder.config.vocab_size >= len(tokenizer)
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id


@pytest.fixture(scope="module")
def fidelity() -> dict[str, ConceptFidelity]:
    from tessera_shapes.evaluation import vae_fidelity

    vae = AutoencoderKL.from_pretrained(PRESET_DIR, subfolder="vae", torch_dtype=torch.float32)
    return vae_fidelity(vae, images_per_concept=12)


@pytest.mark.parametrize(
    ("name", "floor"),
    # Measured on 12 images each (stage-1d VAE, strict scorer): 1.0 for the first four, orange_ring 0.75 (orange
    # comes back too yellow at some sides: why it is not an evaluation concept), striped_square 0.92.
    [
        ("purple_star", 0.9),
        ("green_ring", 0.9),
        ("purple_triangle", 0.9),
        ("striped_red_triangle", 0.9),
        ("orange_ring", 0.5),
        ("striped_square", 0.75),
    ],
)
def test_vae_keeps_held_out_hues_shapes_and_stripes(
    fidelity: dict[str, ConceptFidelity], name: str, floor: float
) -> None:
    """The UNet never saw these traits, but the VAE must carry them, or no concept could be learned."""
    assert fidelity[name].colour_distance < 40
    assert fidelity[name].scorer_correct >= floor


@pytest.mark.slow
def test_base_model_draws_what_it_is_asked() -> None:
    from tessera_shapes.evaluation import generate, load_preset_pipeline, pair_prompts, single_prompts
    from tessera_shapes.scorer import score_caption

    pipeline = load_preset_pipeline(PRESET_DIR, dtype=torch.float32)
    rng = np.random.default_rng(0)
    singles = [single_prompts()[i] for i in rng.choice(36, 8, replace=False)]
    pairs = [pair_prompts()[i] for i in rng.choice(144, 8, replace=False)]

    images = generate(pipeline, singles + pairs, seed=0)
    verdicts = [score_caption(image, prompt).correct for image, prompt in zip(images, singles + pairs, strict=True)]

    # Measured on the shipped preset under the strict scorer: 6/8 and 2/8 (its circles and squares are often
    # pinched or rounded, which the scorer refuses; the preset README gives the full figures).
    assert sum(verdicts[:8]) >= 5
    assert sum(verdicts[8:]) >= 1
