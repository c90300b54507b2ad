"""The benchmark suite: row verdicts, the table, and one real benchmark run through ``python -m bench``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.rows import Row, format_table, read_rows, write_rows

ROOT = Path(__file__).resolve().parents[2]


def _row(value: float, target: str | None) -> Row:
    return Row("x.ratio", value, "x", "the other arm", target, "what and why")


@pytest.mark.parametrize(
    ("value", "target", "ok"),
    [
        (2.9, "<= 3", True),
        (3.0, "<= 3", True),
        (3.1, "<= 3", False),
        (49.0, "< 50", True),
        (50.0, "< 50", False),
        (1.5, ">= 1.44", True),
        (1.0, ">= 1.44", False),
        (1.0, "> 1", False),
        (1.0, None, None),
    ],
)
def test_row_verdict_follows_its_target(value: float, target: str | None, ok: bool | None) -> None:
    assert _row(value, target).ok is ok


def test_rows_round_trip_through_json_and_the_table_names_each(tmp_path: Path) -> None:
    rows = [_row(2.0, "<= 3"), Row("y.ms", 12.5, "ms", "bare", "< 50", "about"), Row("z", 0.5, "x", "b", None, "a")]
    write_rows(rows, tmp_path / "rows.json")
    data = json.loads((tmp_path / "rows.json").read_text())
    assert [set(d) for d in data] == [{"name", "value", "unit", "baseline", "target", "ok", "about"}] * 3
    assert [d["ok"] for d in data] == [True, True, None]
    assert read_rows(tmp_path / "rows.json") == rows
    table = format_table(rows)
    for name in ("x.ratio", "y.ms", "z"):
        assert name in table
    assert "12.5 ms" in table and "yes" in table


@pytest.mark.slow
def test_the_suite_runs_a_benchmark_and_writes_its_rows(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "separation", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["separation.step_ratio"]
    assert math.isfinite(rows[0]["value"]) and rows[0]["value"] > 0
    assert rows[0]["ok"] is (rows[0]["value"] <= 1.3)
    context = json.loads(out.with_suffix(".env.json").read_text())
    assert context["quick"] is True and context["failed"] == []
    assert "separation.step_ratio" in done.stdout  # the table is printed last
