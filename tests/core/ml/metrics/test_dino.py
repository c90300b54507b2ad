"""DINO similarity on a tiny random ViT: the CLS feature by hand, identities and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import ViTModel

from core.ml.metrics.dino import dino_embeddings, dino_score
from core.ml.metrics.encoders import DINO_FOLDER, EvalEncoders


def test_identical_images_score_one(encoders: EvalEncoders, generated: list[PIL.Image.Image]) -> None:
    assert dino_score(encoders.dino, generated[:1], generated[:1]) == pytest.approx(1.0, abs=1e-5)
    assert dino_score(encoders.dino, generated[:1] * 2, generated[:1] * 3) == pytest.approx(1.0, abs=1e-5)


def test_score_is_the_mean_pairwise_cosine_of_cls_features(
    encoders_root: Path, encoders: EvalEncoders, generated: list[PIL.Image.Image], references: list[PIL.Image.Image]
) -> None:
    model = ViTModel.from_pretrained(encoders_root / DINO_FOLDER, add_pooling_layer=False, local_files_only=True)
    with torch.no_grad():
        cls_generated = model(pixel_values=encoders.dino.transform(generated)).last_hidden_state[:, 0].double()
        cls_references = model(pixel_values=encoders.dino.transform(references)).last_hidden_state[:, 0].double()
    cosines = [float(g @ r / g.norm() / r.norm()) for g in cls_generated for r in cls_references]
    score = dino_score(encoders.dino, generated, references)
    assert score == pytest.approx(float(np.mean(cosines)), abs=1e-5)
    assert -1.0 <= score < 1.0


def test_batched_and_one_by_one_agree(encoders: EvalEncoders, generated: list[PIL.Image.Image]) -> None:
    batched = dino_embeddings(encoders.dino, generated)
    single = dino_embeddings(encoders.dino, generated, batch_size=1)
    assert batched.shape == (len(generated), 32)
    torch.testing.assert_close(single, batched, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(len(generated)))
