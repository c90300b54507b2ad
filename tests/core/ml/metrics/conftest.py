"""Fixtures for the metric tests: tiny random CLIP and DINO written once per session, loaded by the real loaders."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from core.ml.metrics.encoders import EvalEncoders, load_eval_encoders
from core.ml.metrics.tiny import build_tiny_eval_encoders


@pytest.fixture(scope="session")
def encoders_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_eval_encoders(tmp_path_factory.mktemp("eval-encoders"))


@pytest.fixture(scope="session")
def encoders(encoders_root: Path, _one_torch_thread: None) -> EvalEncoders:
    return load_eval_encoders(encoders_root)


def pattern_image(seed: int, size: tuple[int, int] = (56, 40)) -> PIL.Image.Image:
    """A random-colour stripe pattern over noise; ``size`` is (width, height), not square, so crops matter."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    period = 4 + seed % 5
    pixels[:, (np.arange(width) // period) % 2 == 0] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.fixture(scope="session")
def generated() -> list[PIL.Image.Image]:
    return [pattern_image(seed) for seed in range(5)]


@pytest.fixture(scope="session")
def references() -> list[PIL.Image.Image]:
    return [pattern_image(seed, size=(48, 64)) for seed in range(10, 13)]
