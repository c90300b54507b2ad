"""The shapes evaluation: its report structure on the tiny preset (fast), its quality floors on the shipped one (slow).

Tiny's images are noise to the scorer, so the fast tests check plumbing and sample counts only; the slow test runs
the quick plan on the shipped ``shapes`` preset and fails when a figure drops below its floor.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.ml.components import SHIPPED_PRESETS_ROOT, SDComponents, load_components
from core.ml.shapes import world
from core.ml.shapes.eval_report import QUICK_PLAN, SECTIONS, EvalPlan, format_table, main, run_shapes_eval
from core.ml.shapes.personalization import (
    SHAPES_RECIPE,
    Tally,
    concept_examples,
    learn_concept,
    sample,
    shows_concept,
)
from core.ml.shapes.scorer import detect_objects

TOY_RECIPE = dataclasses.replace(
    SHAPES_RECIPE, training=SHAPES_RECIPE.training.model_copy(update={"max_train_steps": 2}), num_inference_steps=2
)
TOY_PLAN = EvalPlan(
    single_repeats=1,
    pair_repeats=1,
    concepts=("purple_star", "striped_square"),
    concept_samples=3,
    pairs=(("purple_star", "orange_ring"), ("orange_ring", "purple_star")),
    pair_samples=2,
    separation=True,
    attention_images=2,
    recipe=TOY_RECIPE,
)
FIGURE_KEYS = {"value", "n", "ci95", "reason"}
SHAPES_READY = (SHIPPED_PRESETS_ROOT / "shapes" / "unet").is_dir()


def test_concept_examples_are_the_concept_alone_where_captioned_and_reproducible() -> None:
    concept = world.concept("striped_square")
    positions = ("center", "left", "right")
    images, captions = concept_examples(concept, count=5, seed=3, positions=positions)
    again, _ = concept_examples(concept, count=5, seed=3, positions=positions)

    assert captions == [
        "a <striped_square>",
        "a <striped_square> on the left",
        "a <striped_square> on the right",
        "a <striped_square>",
        "a <striped_square> on the left",
    ]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, again, strict=True))
    for image, position in zip(images, [*positions, *positions], strict=False):
        assert shows_concept(np.asarray(image), concept)
        assert [o.position for o in detect_objects(image)] == [position]


def test_tally_rates_and_intervals() -> None:
    tally = Tally()
    for success in (True, True, False, True):
        tally.add(success)
    assert (tally.successes, tally.n, tally.rate) == (3, 4, 0.75)
    low, high = tally.ci95 or (0.0, 0.0)
    assert 0.0 < low < 0.75 < high < 1.0
    assert Tally().rate is None and Tally().ci95 is None
    assert tally.merged(Tally(1, 2)) == Tally(4, 6)


@pytest.fixture(scope="module")
def toy_report(components: SDComponents) -> dict[str, Any]:
    return run_shapes_eval(components, quick=True, seed=0, plan=TOY_PLAN)


def test_report_has_every_figure_with_its_sample_count(toy_report: dict[str, Any]) -> None:
    report = json.loads(json.dumps(toy_report))  # what eval/shapes.json holds
    figures = {s: report[s] for s in SECTIONS}
    for section in figures.values():
        for fig in section.values():
            assert set(fig) == FIGURE_KEYS
            if fig["value"] is None:
                assert fig["reason"] and fig["n"] == 0 and fig["ci95"] is None
            else:
                assert fig["reason"] is None and 0.0 <= fig["ci95"][0] <= fig["value"] <= fig["ci95"][1] <= 1.0

    base = figures["base_model"]
    assert base["single.colour"]["n"] == 36 and base["single.all_correct"]["n"] == 36
    assert base["pair.position"]["n"] == 288 and base["pair.all_correct"]["n"] == 144
    assert base["pair_held_out.all_correct"]["n"] == len(world.HELD_OUT_PAIRS)

    learning = figures["concept_learning"]
    assert learning["fidelity.purple_star"]["n"] == learning["position_following.striped_square"]["n"] == 3
    assert learning["fidelity"]["n"] == learning["position_following"]["n"] == 6
    assert "fidelity.orange_ring" not in learning  # trained for the pairs only

    fusion, separation = figures["fusion"], figures["separation"]
    for method in ("stacked", "regional", "conductor"):
        assert fusion[f"binding.{method}"]["n"] == fusion[f"leakage.{method}"]["n"] == 4
        assert fusion[f"concept_binding.{method}"]["n"] == 8
    for arm in ("without_loss", "with_loss"):
        assert separation[f"leakage.{arm}"]["n"] == 4
        assert separation[f"attention_in_mask.{arm}"]["n"] == 2 * 2  # images x concepts
        assert 0.0 <= separation[f"attention_in_mask.{arm}"]["value"] <= 1.0
    assert report["plan"]["recipe"]["training"]["max_train_steps"] == 2
    assert report["preset"] == "tiny" and report["quick"] is True


def test_the_quick_plan_leaves_separation_out_with_a_reason(components: SDComponents) -> None:
    plan = dataclasses.replace(TOY_PLAN, concepts=("purple_star",), pairs=(), separation=False, concept_samples=1)
    report = run_shapes_eval(components, quick=True, seed=0, plan=plan)

    for fig in report["separation"].values():
        assert fig["value"] is None and "quick plan" in fig["reason"]
    assert report["fusion"]["binding.regional"]["n"] == 0 and report["fusion"]["binding.regional"]["value"] is None


def test_table_lists_every_figure(toy_report: dict[str, Any]) -> None:
    table = format_table(toy_report)
    for section in SECTIONS:
        for name, fig in toy_report[section].items():
            line = next(line for line in table.splitlines() if line.startswith(section) and f" {name} " in line)
            assert str(fig["n"]) in line
            assert (fig["reason"] or "") in line


def test_concept_learning_and_sampling_leave_the_components_alone(
    components: SDComponents, unchanged: Callable[[], None]
) -> None:
    weights = learn_concept(components, world.concept("orange_ring"), recipe=TOY_RECIPE, seed=1)
    images = sample(components, [weights], "a <orange_ring> on the left", count=2, seed=0, recipe=TOY_RECIPE)

    assert weights.class_word == "circle" and weights.training_options["num_images"] == 5
    assert [i.shape for i in images] == [(64, 64, 3)] * 2
    unchanged()


def test_command_line_writes_the_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("core.ml.shapes.eval_report.QUICK_PLAN", TOY_PLAN)
    threads = torch.get_num_threads()
    try:
        main(
            [
                "--out",
                str(tmp_path / "eval" / "shapes.json"),
                "--quick",
                "--preset",
                "tiny",
                "--models-root",
                str(models_root),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "eval" / "shapes.json").read_text())
    assert set(SECTIONS) <= set(report) and report["quick"] is True
    assert "fusion" in capsys.readouterr().out


@pytest.fixture(scope="module")
def shapes_components() -> Iterator[SDComponents]:
    if not SHAPES_READY:
        pytest.skip("the shapes preset is not in core/ml/presets/shapes yet (python -m core.ml.shapes.training)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_components("shapes", Path("unused-for-shipped-presets"))
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_evaluation_of_the_shipped_model_meets_its_floors(shapes_components: SDComponents) -> None:
    """Floors sit below what the quick plan measured on the shipped preset (seed 0, one thread, 2026-11-26, VAE
    after stage 1c, recipe with background weight 0.3: base single 36/36 and pairs 141/144 all correct; fidelity
    16/16 and 14/16; position following 12/32; per-concept binding regional 7/32, conductor 4/32, stacked 3/32);
    it ran in 117 s on one core."""
    started = time.monotonic()
    report = run_shapes_eval(shapes_components, quick=True, seed=0)
    elapsed = time.monotonic() - started
    table = format_table(report)

    def value(section: str, name: str) -> float:
        return float(report[section][name]["value"])

    assert report["plan"]["concepts"] == list(QUICK_PLAN.concepts)
    assert value("base_model", "single.all_correct") >= 0.9, table
    assert value("base_model", "pair.all_correct") >= 0.9, table
    # What must hold (issue 3): a held-out concept learned by ED-LoRA reaches at least 80% fidelity.
    assert max(value("concept_learning", f"fidelity.{name}") for name in QUICK_PLAN.concepts) >= 0.8, table
    assert value("concept_learning", "fidelity") >= 0.8, table
    assert value("concept_learning", "position_following") >= 0.3, table
    # Region-aware fusion must not bind worse than stacking every adapter over the whole image.
    stacked = value("fusion", "concept_binding.stacked")
    assert value("fusion", "concept_binding.regional") >= max(stacked, 2 / 32), table
    assert value("fusion", "concept_binding.conductor") >= stacked, table
    assert elapsed < 300, table
