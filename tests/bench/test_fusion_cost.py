"""The generation cost benchmark's smoke run: every row is written, with its target and a verdict that follows it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.rows import row_from_json
from tests.bench.runner import run_bench

TARGETS = {
    "generation.regional.vs_plain": None,
    "generation.conductor.n1.vs_plain": "<= 2.30",
    "generation.conductor.n2.vs_plain": "<= 3.45",
    "generation.conductor.n3.vs_plain": "<= 4.60",
    "generation.conductor.n2.sequential_vs_batched": ">= 1.5",
    "generation.styling.vs_plain": None,
}


@pytest.mark.slow
def test_quick_run_writes_every_generation_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done, data = run_bench(
        "bench.fusion_cost", "--quick", "--threads", "1", "--models-root", str(tmp_path / "models"), out=out
    )
    rows = [row_from_json(d) for d in data]
    assert {r.name: r.target for r in rows} == TARGETS
    for row in rows:
        assert row.unit == "x" and math.isfinite(row.value) and row.value > 0, row
        assert row.about and row.baseline
    # The per-step costs are ratios of one forward to another: none is far outside what the arms can cost.
    by_name = {r.name: r.value for r in rows}
    assert 0.5 < by_name["generation.conductor.n1.vs_plain"] < by_name["generation.conductor.n3.vs_plain"] < 20
    assert by_name["generation.conductor.n2.sequential_vs_batched"] > 1.0
    # The line with our step count and time beside the reference's settings, then the table, last.
    assert "Reference implementation: 200 steps" in done.stdout
    tail = done.stdout.strip().splitlines()[-len(TARGETS) :]
    assert [line.split()[0] for line in tail] == list(TARGETS)
