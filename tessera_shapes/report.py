"""The shapes evaluation report: every quality figure of the shipped model, with its sample size, as one JSON.

Sections and figures (each ``{"value": float | None, "n": int, "ci95": [lo, hi] | None, "reason": str | None}``;
``value`` is a rate in [0, 1], ``ci95`` its 95% Wilson interval, ``reason`` says why a figure is missing):

- ``base_model``: colour / shape / position accuracy per expected object and the all-correct rate per image, for
  one-object and two-object prompts (``tessera_shapes.evaluation``), plus two-object leakage;
- ``concept_learning``: ED-LoRA fidelity and position following per held-out concept and pooled
  (``tessera_shapes.personalization``);
- ``separation``: attention-in-mask share and two-concept leakage of the same concepts trained on Seg-Mix
  composites without and with the attention separation loss (full plan only: it trains every concept twice more);
- ``fusion``: two-concept binding (per image and per concept) and leakage of naive stacking, ``regional`` and
  ``conductor`` on concepts trained as a request is by default, and of regional and conductor on the two composite
  arms (``FUSED_METHODS``).

A figure that a plan does not measure is present with ``value: null`` and the reason, so every report has the same
keys. Attention-in-mask is a mean share, not a rate: its interval is a normal approximation over images.

``tessera shapes eval --out eval/shapes.json [--quick]`` (or ``python -m tessera_shapes.report``) runs it and prints
the table.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from core.ml.components import load_components
from tessera_shapes.eval_plan import SECTIONS, Figure
from tessera_shapes.eval_runner import run_shapes_eval
from tessera_shapes.figure import render_figure
from tessera_shapes.personalization import SHAPES_RECIPE

logger = logging.getLogger(__name__)


def _format_value(fig: Figure) -> tuple[str, str, str]:
    if fig["value"] is None:
        return "-", str(fig["n"]), ""
    low, high = fig["ci95"]
    return f"{fig['value']:.3f}", str(fig["n"]), f"[{low:.3f}, {high:.3f}]"


def format_table(report: dict[str, Any]) -> str:
    """The report as one plain-text table: section, figure, value, n, 95% CI, and the reason for missing ones."""
    rows = [("section", "figure", "value", "n", "95% CI", "note")]
    for section in SECTIONS:
        for name, fig in report[section].items():
            rows.append((section, name, *_format_value(fig), fig["reason"] or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i]) for i in range(5)]
        lines.append("  ".join([*cells, row[5]]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    title = (
        f"shapes evaluation of {report['preset']} ({'quick' if report['quick'] else 'full'}, seed {report['seed']})"
    )
    return "\n".join([title, *lines])


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> None:
    """``python -m tessera_shapes.report`` (``tessera shapes eval``): run the evaluation, write the JSON, print
    the table. ``prog`` names the command in ``--help``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("eval/shapes.json"))
    parser.add_argument("--quick", action="store_true", help="the small subset that make test runs")
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--models-root", type=Path, default=Path("data/models"), help="for presets not shipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in all (tiny models run best on one)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the threads (training seeds run side by side)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    components = load_components(args.preset, args.models_root)
    load = partial(load_components, args.preset, args.models_root)
    report, rows = run_shapes_eval(components, quick=args.quick, seed=args.seed, workers=args.workers, load=load)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    picture = args.out.with_suffix(".png")
    render_figure(rows, report["plan"]["pairs"], recipe=SHAPES_RECIPE, seed=args.seed).save(picture)
    # A command-line entry point: the table is its output.
    print(format_table(report))
    print(f"wrote {args.out} and {picture}")


if __name__ == "__main__":
    main(prog="python -m tessera_shapes.report")
