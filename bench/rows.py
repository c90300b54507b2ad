"""One row of the benchmark suite: a measured figure, what it is compared against, and its target.

Every benchmark module in ``bench/`` can print its own detail and, given ``--rows FILE``, writes the rows it
measured there as JSON; ``python -m bench`` (``make bench``) runs them all, each in its own process, and gathers the
rows into ``bench/results.json`` and one table. A row's value is a ratio (or a difference) measured side by side in
the same run, because absolute times on a shared machine mean little.
"""

from __future__ import annotations

import argparse
import json
import operator
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclass(frozen=True)
class Row:
    """One figure of the suite.

    Args:
        name: dotted, stable name, e.g. ``"create_path.p50_ratio"``.
        value: the measured figure.
        unit: ``"x"`` for a ratio, else ``"ms"``, ``"s"``, ``"%"``, ``"steps/s"``, ...
        baseline: what the figure is measured against (the other arm of the side-by-side run).
        target: ``"<op> <number>"`` (``"<= 3"``, ``">= 1.44"``, ``"< 50"``) where this machine can judge it, else
            None (e.g. a GPU target measured on a CPU).
        about: what the row compares and why it matters, in one or two sentences; a missed target says by how much
            and why here.
    """

    name: str
    value: float
    unit: str
    baseline: str
    target: str | None
    about: str

    @property
    def ok(self) -> bool | None:
        """Whether ``value`` meets ``target``; None without a target."""
        if self.target is None:
            return None
        op, number = self.target.split()
        return _OPS[op](self.value, float(number))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "value": round(self.value, 4), "ok": self.ok}


def row_from_json(data: dict[str, Any]) -> Row:
    return Row(data["name"], float(data["value"]), data["unit"], data["baseline"], data["target"], data["about"])


def add_rows_argument(parser: argparse.ArgumentParser) -> None:
    """``--rows FILE`` (write the rows as JSON) and ``--quick`` (a smoke run of seconds, for tests)."""
    parser.add_argument("--rows", type=Path, help="write the measured rows to this JSON file (the suite reads it)")
    parser.add_argument("--quick", action="store_true", help="a smoke run at the smallest sizes (seconds)")


def write_rows(rows: Sequence[Row], path: Path | None) -> None:
    """Write ``rows`` to ``path`` (nothing when None)."""
    if path is not None:
        path.write_text(json.dumps([r.as_json() for r in rows], indent=2) + "\n", encoding="utf-8")


def read_rows(path: Path) -> list[Row]:
    return [row_from_json(d) for d in json.loads(path.read_text(encoding="utf-8"))]


def alternate(arms: dict[str, Callable[[], object]], repeats: int, *, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each arm over ``repeats`` rounds, the arms taking turns within each round (so drift on a
    noisy machine hits every arm alike), after ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(warmup + repeats):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: name, value and unit, target, verdict, baseline."""
    header = ("row", "value", "target", "ok", "against")
    cells = [
        (
            r.name,
            f"{r.value:.3g} {r.unit}" if abs(r.value) < 1000 else f"{r.value:.0f} {r.unit}",
            r.target or "-",
            {True: "yes", False: "NO", None: "-"}[r.ok],
            r.baseline,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    return "\n".join(lines)
