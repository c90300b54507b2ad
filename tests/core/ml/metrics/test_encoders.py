"""Loading the evaluation encoders from the encoders root, and the protocol's image transform."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPImageProcessor

from core.errors import ModelLoadError
from core.ml.metrics.encoders import CLIP_FOLDER, DINO_FOLDER, EvalEncoders, ImageTransform, load_eval_encoders
from core.ml.metrics.tiny import build_tiny_eval_encoders
from tests.core.ml.metrics.conftest import pattern_image


def test_loaders_give_frozen_eval_models(encoders: EvalEncoders) -> None:
    for model in (encoders.clip.model, encoders.dino.model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert encoders.clip.transform.crop == encoders.clip.model.config.vision_config.image_size == 32
    assert encoders.dino.transform.crop == encoders.dino.model.config.image_size == 32
    # DINO resizes by 256/224 before the crop; CLIP resizes straight to the crop size.
    assert (encoders.dino.transform.resize, encoders.clip.transform.resize) == (37, 32)
    assert encoders.dino.model.pooler is None


@pytest.mark.parametrize("missing", [CLIP_FOLDER, DINO_FOLDER])
def test_missing_folder_names_it_and_the_pull_command(encoders_root: Path, tmp_path: Path, missing: str) -> None:
    root = tmp_path / "encoders"
    shutil.copytree(encoders_root, root)
    shutil.rmtree(root / missing)
    with pytest.raises(ModelLoadError) as info:
        load_eval_encoders(root)
    assert str(root / missing) in info.value.message
    assert "tessera models pull" in info.value.message


def test_folder_without_weights_is_a_model_load_error(encoders_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "encoders"
    shutil.copytree(encoders_root, root)
    (root / DINO_FOLDER / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="could not load DINO"):
        load_eval_encoders(root)


def test_tiny_build_is_byte_identical(encoders_root: Path, tmp_path: Path) -> None:
    again = build_tiny_eval_encoders(tmp_path / "again")
    for folder in (CLIP_FOLDER, DINO_FOLDER):
        first = (encoders_root / folder / "model.safetensors").read_bytes()
        assert (again / folder / "model.safetensors").read_bytes() == first


def test_transform_resizes_short_side_and_centre_crops() -> None:
    # Left half black, right half white, 80x40: short side → 20, so 40x20, then the centre 20x20 is half and half.
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, 40:] = 255
    transform = ImageTransform(resize=20, crop=20, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = transform([PIL.Image.fromarray(pixels), PIL.Image.fromarray(pixels).convert("L")])
    assert out.shape == (2, 3, 20, 20)
    assert out.dtype == torch.float32
    assert torch.equal(out[0], out[1])
    assert float(out[0, :, :, :8].max()) < 0.05
    assert float(out[0, :, :, 12:].min()) > 0.95


def test_transform_matches_the_clip_processor(encoders_root: Path, encoders: EvalEncoders) -> None:
    processor = CLIPImageProcessor.from_pretrained(encoders_root / CLIP_FOLDER, local_files_only=True)
    # At the model's own size no resampling happens, so the two must agree to float rounding ...
    square = [pattern_image(0, size=(32, 32))]
    expected = processor(images=square, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(encoders.clip.transform(square), expected, atol=1e-5, rtol=0)
    # ... and after resizing they differ only by PIL versus torchvision bicubic resampling.
    larger = [pattern_image(1, size=(80, 64))]
    expected = processor(images=larger, return_tensors="pt")["pixel_values"]
    assert float((encoders.clip.transform(larger) - expected).abs().mean()) < 0.1


def test_published_processor_configs_with_integer_sizes_load(encoders_root: Path, tmp_path: Path) -> None:
    # openai/clip-vit-base-patch32 and facebook/dino-vits16 still ship the feature-extractor format: "size": 224.
    root = tmp_path / "encoders"
    shutil.copytree(encoders_root, root)
    clip_config = root / CLIP_FOLDER / "preprocessor_config.json"
    legacy = {"crop_size": 32, "size": 32, "resample": 3, "feature_extractor_type": "CLIPFeatureExtractor"}
    clip_config.write_text(json.dumps({**json.loads(clip_config.read_text()), **legacy}))
    dino_config = root / DINO_FOLDER / "preprocessor_config.json"
    dino_config.write_text(json.dumps({**json.loads(dino_config.read_text()), "size": 32, "resample": 2}))
    encoders = load_eval_encoders(root)
    assert (encoders.clip.transform.resize, encoders.clip.transform.crop) == (32, 32)
    assert (encoders.dino.transform.resize, encoders.dino.transform.crop) == (37, 32)
