"""bench/gpu.py: the CPU rehearsal runs the whole script and writes every row without a verdict; on an H100 the
rows carry the issue's targets."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

from bench.gpu_measure import Setup
from bench.gpu_rows import generation_rows, peak_tflops, training_rows
from bench.training_throughput import TrainingTimes
from tests.bench.runner import run_bench

ROWS = [
    "gpu.unet.tflops",
    "gpu.unet.peak_fraction",
    *(
        f"gpu.generation.{arm}.steps{steps}"
        for arm in ("plain", "conductor_n2", "conductor_n2_styled")
        for steps in (30, 50)
    ),
    *(f"gpu.edlora.b{batch}.{what}" for batch in (1, 2, 4) for what in ("step_s", "vs_baseline", "peak_mib")),
    "gpu.edlora.steps500_s",
    "gpu.bench.wall_s",
]


@pytest.mark.slow
def test_cpu_rehearsal_writes_every_row_and_prints_the_table_last(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done, rows = run_bench(
        "bench.gpu", "--cpu-smoke", "--models-root", str(tmp_path / "models"), out=out, env={"OMP_NUM_THREADS": "1"}
    )
    assert [r["name"] for r in rows] == ROWS
    for row in rows:
        # Nothing is claimed for a GPU from a CPU run.
        assert row["target"] is None and row["ok"] is None, row
        assert row["about"] and row["baseline"]
    values = {r["name"]: r["value"] for r in rows}
    for name in ROWS:
        if name not in ("gpu.unet.peak_fraction",) and not name.endswith("peak_mib"):
            assert math.isfinite(values[name]) and values[name] > 0, name
    # Rows are rounded to 4 decimals: a CPU step of ~0.03 s carries up to ~0.2% of rounding into 500 x it.
    assert values["gpu.edlora.steps500_s"] == pytest.approx(500 * values["gpu.edlora.b4.step_s"], rel=5e-3)
    assert "CPU rehearsal" in rows[0]["about"]
    lines = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[-len(ROWS) :]] == ROWS  # the table, last
    assert any(line.startswith("anchors:") and "1.06 s" in line and "0.48 s" in line for line in lines)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("CPU, 2 threads", None),
    ],
)
def test_peak_by_device_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name) == peak


def _setup(card: str, *, judged: bool) -> Setup:
    components = SimpleNamespace(dtype=torch.float16, preset="sd15-random", device=torch.device("cuda"))
    return Setup(
        components=cast(Any, components),
        styling=cast(Any, None),
        card=card,
        side=512,
        steps=(30, 50),
        repeats=2,
        train_steps=10,
        train_repeats=1,
        train_dtype=torch.bfloat16,
        judged=judged,
        h100_class="H100" in card,
    )


def _targets(setup: Setup) -> dict[str, str | None]:
    latency = {(arm, steps): 1.0 for arm in ("plain", "conductor_n2", "conductor_n2_styled") for steps in (30, 50)}
    times = {b: TrainingTimes(0.1, 0.2, 1000.0, 2000.0) for b in (1, 2, 4)}
    rows = generation_rows(setup, latency, 1000.0) + training_rows(setup, times, 500.0)
    return {r.name: r.target for r in rows if r.target is not None}


def test_an_h100_run_is_held_to_the_issues_targets() -> None:
    assert _targets(_setup("NVIDIA H100 80GB HBM3", judged=True)) == {
        "gpu.generation.plain.steps50": "<= 0.5",
        "gpu.generation.conductor_n2_styled.steps50": "<= 2.0",
        "gpu.edlora.b4.vs_baseline": ">= 1.44",
        "gpu.edlora.steps500_s": "<= 60",
    }


def test_other_cards_get_only_the_card_independent_target_and_a_rehearsal_none() -> None:
    assert _targets(_setup("NVIDIA A100-SXM4-80GB", judged=True)) == {"gpu.edlora.b4.vs_baseline": ">= 1.44"}
    assert _targets(_setup("CPU, 2 threads", judged=False)) == {}
