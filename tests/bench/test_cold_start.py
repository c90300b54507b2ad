"""The cold-start benchmark's smoke run: every row is written, finite and positive, with a verdict that follows its
target, and the quick run's switch really reattaches kept wrappers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.rows import row_from_json
from tests.bench.runner import run_bench

TARGETS = {
    "cold_start.first_vs_warm": None,
    "cold_start.first_job_extra_s": None,
    "concept_switch.vs_reload": "< 1",
    "concept_switch.reuse_speedup": None,
    "concept_switch.share_of_30_steps": "< 5",
}


@pytest.mark.slow
def test_quick_run_writes_every_cold_start_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    _, data = run_bench("bench.cold_start", "--quick", out=out, env={"TMPDIR": str(tmp_path)})
    rows = [row_from_json(d) for d in data]
    assert {r.name: r.target for r in rows} == TARGETS
    for row, written in zip(rows, data, strict=True):
        assert math.isfinite(row.value) and row.value > 0, row
        assert row.about and row.baseline and row.unit
        assert written["ok"] is row.ok  # the verdict written is the one its value and target give
        if row.target is not None:
            assert isinstance(written["ok"], bool)
    by_name = {r.name: r for r in rows}
    # A quick run measures the "full size" rows on the tiny preset and must say so.
    for name in ("concept_switch.vs_reload", "concept_switch.share_of_30_steps"):
        assert "tiny preset" in by_name[name].about, by_name[name]
    # Kept wrappers skip peft's injection (about 9x on tiny): a run where every switch injects afresh is at ~1x.
    assert by_name["concept_switch.reuse_speedup"].value > 2
    # The first job on a fresh worker loads the model: it cannot be faster than the same job warm.
    assert by_name["cold_start.first_vs_warm"].value > 1
