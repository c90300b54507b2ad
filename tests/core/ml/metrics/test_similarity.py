"""The scores on embeddings: CLIPScore's 2.5·max(cos, 0) and the mean pairwise cosine, on hand-made vectors."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import InvalidRequestError
from core.ml.metrics.similarity import CLIPSCORE_WEIGHT, clipscore, mean_pairwise_cosine


def _unit(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_clipscore_scales_by_2_5_and_clips_negative_cosines() -> None:
    images = _unit((1.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    texts = _unit((1.0, 1.0), (-1.0, 0.2), (0.0, 1.0))
    # cosines: 1/√2, negative (→ 0), 1
    expected = (2.5 * (1 / math.sqrt(2)) + 0.0 + 2.5 * 1.0) / 3
    assert CLIPSCORE_WEIGHT == 2.5
    assert clipscore(images, texts) == pytest.approx(expected, abs=1e-6)
    assert clipscore(images[1:2], texts[1:2]) == 0.0


def test_mean_pairwise_cosine_averages_every_pair_without_clipping() -> None:
    generated = _unit((1.0, 0.0), (0.0, 1.0))
    references = _unit((1.0, 0.0), (-1.0, 0.0), (1.0, 1.0))
    # pairs: 1, -1, 1/√2, 0, 0, 1/√2
    expected = (1 - 1 + 2 / math.sqrt(2)) / 6
    assert mean_pairwise_cosine(generated, references) == pytest.approx(expected, abs=1e-6)
    assert mean_pairwise_cosine(references, references[1:2]) < 0


def test_mismatched_or_empty_embeddings_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="one prompt embedding per image"):
        clipscore(_unit((1.0, 0.0), (0.0, 1.0)), _unit((1.0, 0.0)))
    with pytest.raises(InvalidRequestError, match="non-empty"):
        mean_pairwise_cosine(torch.zeros(0, 2), _unit((1.0, 0.0)))
