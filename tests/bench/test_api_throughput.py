"""The create-path benchmark's smoke run: it starts its servers, measures, and writes the suite's rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.rows import read_rows

ROOT = Path(__file__).resolve().parents[2]

TARGETED = {
    "create_path.mean_ratio",
    "create_path.p50_ratio",
    "create_path.single.p50_ratio",
    "create_path.single.mean_ratio",
}
INFORMATIVE = {
    "create_path.p99_ratio",
    "create_path.throughput_ratio",
    "create_path.vs_async.mean_ratio",
    "create_path.vs_async.p50_ratio",
    "create_path.vs_async.single.p50_ratio",
}


@pytest.mark.slow
def test_a_quick_run_writes_every_row_with_a_finite_ratio_and_its_verdict(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.api_throughput", "--quick", "--rows", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # The printed detail stays: both runs, both servers, their ratios.
    assert done.stdout.count("ratio (tessera / bare)") == 2 and "one at a time" in done.stdout
    assert done.stdout.count("ratio (tessera / bare_async)") == 2
    rows = {row.name: row for row in read_rows(out)}
    assert set(rows) == TARGETED | INFORMATIVE
    raw = {entry["name"]: entry for entry in json.loads(out.read_text())}
    for name, row in rows.items():
        assert math.isfinite(row.value) and row.value > 0, (name, row.value)
        assert row.unit == "x" and "bare FastAPI endpoint" in row.baseline and row.about, name
        if name in TARGETED:
            assert row.target == "<= 3" and raw[name]["ok"] is (row.value <= 3), (name, raw[name])
        else:
            assert row.target is None and raw[name]["ok"] is None, name
    # The create path does strictly more work than the bare endpoint: bounds with room for a noisy machine, that a
    # swapped pair of arms or a ratio inverted by mistake would break.
    assert rows["create_path.throughput_ratio"].value < 1.5
    assert rows["create_path.single.mean_ratio"].value > 0.5
    # The async bare endpoint is the cheaper baseline: the create path costs more against it than against the def one.
    assert rows["create_path.vs_async.single.p50_ratio"].value > rows["create_path.single.p50_ratio"].value
