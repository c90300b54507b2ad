"""The training throughput benchmark: its smoke run writes both rows, and its baseline loop does the project's work
(the same loss at step 1 from the same seed and batch, the same trajectory after), so the ratio is of engineering."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.rows import row_from_json
from bench.training_throughput import (
    CLASS_WORD,
    CONCEPT,
    TrainingTimes,
    baseline_train,
    benchmark_config,
    concept_images,
    measure_training,
)
from core.ml.components import SDComponents, load_components
from core.ml.edlora.trainer import train_edlora
from tests.bench.runner import run_bench


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SDComponents]:
    """The tiny preset on one torch thread (both arms' float reductions then run alike)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_components("tiny", tmp_path_factory.mktemp("models"))
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_run_writes_a_speedup_row_per_preset(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    _, data = run_bench(
        "bench.training_throughput",
        "--quick",
        "--threads",
        "1",
        "--models-root",
        str(tmp_path / "models"),
        out=out,
        env={"OMP_NUM_THREADS": "1"},
    )
    rows = [row_from_json(d) for d in data]
    assert [r.name for r in rows] == ["training.speedup.tiny", "training.speedup.shapes"]
    for row, raw in zip(rows, data, strict=True):
        assert row.unit == "x" and row.target == ">= 1", row
        assert math.isfinite(row.value) and row.value > 0, row
        assert raw["ok"] is (row.value >= 1)
        assert "bench/gpu.py" in row.about and row.baseline


@pytest.mark.parametrize("steps", [1, 3])
def test_the_baseline_computes_the_projects_loss(tiny: SDComponents, steps: int) -> None:
    images, masks = concept_images(3, tiny.default_resolution)
    config = benchmark_config(batch_size=2, steps=steps, resolution=None)

    project = train_edlora(
        tiny, images, concept_name=CONCEPT, class_word=CLASS_WORD, config=config, masks=masks
    ).training_options["final_loss"]
    baseline = baseline_train(tiny, images, masks, concept_name=CONCEPT, class_word=CLASS_WORD, config=config)

    assert len(baseline) == steps
    # Step 1: same latents, noise, timesteps, prompts and initial weights; only the attention kernel differs.
    # Later steps add the optimizer's implementation (fused vs per-tensor), still within rounding.
    assert baseline[-1] == pytest.approx(project, rel=1e-5 if steps == 1 else 1e-4)


def test_measure_training_times_both_arms(tiny: SDComponents) -> None:
    times = measure_training(tiny, batch_size=1, steps=5, repeats=1)

    assert isinstance(times, TrainingTimes)
    assert times.project > 0 and times.baseline > 0 and times.speedup == times.baseline / times.project
    assert times.project_peak_mib is None and times.baseline_peak_mib is None  # CPU: no CUDA peak
    with pytest.raises(ValueError, match="warm-up"):
        measure_training(tiny, batch_size=1, steps=3, repeats=1)
