"""The shapes evaluation report: every quality figure of the shipped model, with its sample size, as one JSON.

Sections and figures (each ``{"value": float | None, "n": int, "ci95": [lo, hi] | None, "reason": str | None}``;
``value`` is a rate in [0, 1], ``ci95`` its 95% Wilson interval, ``reason`` says why a figure is missing):

- ``base_model``: colour / shape / position accuracy per expected object and the all-correct rate per image, for
  one-object and two-object prompts (``core.ml.shapes.evaluation``), plus two-object leakage;
- ``concept_learning``: ED-LoRA fidelity and position following per held-out concept and pooled
  (``core.ml.shapes.personalization``);
- ``separation``: attention-in-mask share and two-concept leakage of the same concepts trained without and with
  the attention separation loss (full plan only: it trains every concept twice more);
- ``fusion``: two-concept binding (per image and per concept) and leakage of naive stacking, ``regional`` and
  ``conductor``.

A figure that a plan does not measure is present with ``value: null`` and the reason, so every report has the same
keys. Attention-in-mask is a mean share, not a rate: its interval is a normal approximation over images.

``python -m core.ml.shapes.eval_report --out eval/shapes.json [--quick]`` runs it and prints the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from core.ml.components import SDComponents, load_components
from core.ml.shapes import world
from core.ml.shapes.evaluation import SetScore, evaluate_base_model
from core.ml.shapes.personalization import (
    FUSION_METHODS,
    SHAPES_RECIPE,
    MeanShare,
    PersonalizationRecipe,
    Tally,
    attention_in_mask,
    learn_concept,
    measure_concept,
    measure_pairs,
)

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
SECTIONS = ("base_model", "concept_learning", "separation", "fusion")
SEPARATION_LOSS_WEIGHT = 1.0
"""The with-loss arm's weight: ``EDLoRAConfig``'s default, what the service trains with when it has masks."""
NOT_IN_QUICK_PLAN = "not in the quick plan (it trains every concept twice more); make eval measures it"

Figure = dict[str, Any]

DEFINITIONS = {
    "base_model": (
        "stock pipeline, DPM-Solver++; trait rates are per expected object, all_correct per image (every object "
        "right and nothing extra); leakage = an object wears the other object's colour or shape"
    ),
    "concept_learning.fidelity": "'a <c>': some object has the concept's colour, shape and pattern",
    "concept_learning.position_following": "'a <c> on the left/right': the concept right in every trait, on that side",
    "separation": (
        "each concept trained twice more from its examples with their exact masks (masked diffusion loss in both "
        "arms), separation loss weight 0 vs 1; attention_in_mask = share of the concept tokens' cross-attention "
        "inside the concept's mask on held-out scenes with a neighbour (mean over images); leakage = fusion.leakage "
        "under regional fusion with that arm's adapters"
    ),
    "fusion.binding": "'a <c1> on the left and a <c2> on the right': both right in every trait, each on its side",
    "fusion.concept_binding": "same scenes, per concept: this concept right in every trait on its side",
    "fusion.leakage": "same scenes: an object wears the other concept's colour or shape",
}


@dataclass(frozen=True)
class EvalPlan:
    """How many samples each part of the evaluation draws.

    Args:
        single_repeats, pair_repeats: repeats of the 36 one-object and 144 two-object base prompts.
        concepts: held-out concepts learned with ED-LoRA (names from ``world.HELD_OUT_CONCEPTS``).
        concept_samples: images of ``"a <c>"`` per concept for fidelity, and again of ``"a <c> on the left/right"``
            (split evenly) for position following.
        pairs: ordered (left, right) concept pairs sampled for fusion.
        pair_samples: images per pair and fusion method.
        separation: train the ``concepts`` with and without the separation loss and measure both arms.
        attention_images: held-out scenes per concept and arm for attention-in-mask.
        recipe: how concepts are learned and sampled.
    """

    single_repeats: int
    pair_repeats: int
    concepts: tuple[str, ...]
    concept_samples: int
    pairs: tuple[tuple[str, str], ...]
    pair_samples: int
    separation: bool = False
    attention_images: int = 16
    recipe: PersonalizationRecipe = field(default=SHAPES_RECIPE)


ALL_CONCEPTS = tuple(c.name for c in world.HELD_OUT_CONCEPTS)
FULL_PLAN = EvalPlan(
    single_repeats=6,
    pair_repeats=2,
    concepts=ALL_CONCEPTS,
    concept_samples=64,
    pairs=tuple((a, b) for a in ALL_CONCEPTS for b in ALL_CONCEPTS if a != b),
    pair_samples=16,
    separation=True,
)
QUICK_PLAN = EvalPlan(
    single_repeats=1,
    pair_repeats=1,
    concepts=("purple_star", "orange_ring"),
    concept_samples=16,
    pairs=(("purple_star", "orange_ring"),),
    pair_samples=16,
)


def plan_json(plan: EvalPlan) -> dict[str, Any]:
    """The plan, recipe included, as JSON-ready values."""
    recipe = {**asdict(plan.recipe), "training": plan.recipe.training.model_dump(mode="json")}
    plain = {**{f.name: getattr(plan, f.name) for f in fields(plan) if f.name != "recipe"}, "recipe": recipe}
    # Tuples become lists, as they read back from the file.
    loaded: dict[str, Any] = json.loads(json.dumps(plain))
    return loaded


def figure(tally: Tally) -> Figure:
    """A measured figure: rate, sample count and 95% Wilson interval."""
    ci = tally.ci95
    return {"value": tally.rate, "n": tally.n, "ci95": list(ci) if ci else None, "reason": None}


def mean_figure(shares: MeanShare) -> Figure:
    """A measured mean share: mean over images, image count, normal-approximation 95% interval."""
    ci = shares.ci95
    return {"value": shares.mean, "n": len(shares.values), "ci95": list(ci) if ci else None, "reason": None}


def missing(reason: str) -> Figure:
    """A figure that cannot be measured yet, and why."""
    return {"value": None, "n": 0, "ci95": None, "reason": reason}


def _rate_tally(rate: float, n: int) -> Tally:
    # SetScore keeps rates; counts are whole numbers of samples, so rounding recovers them exactly.
    return Tally(round(rate * n), n)


def base_pipeline(components: SDComponents) -> StableDiffusionPipeline:
    """A stock ``StableDiffusionPipeline`` over the shared components (not copied, not modified)."""
    pipeline = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=type(components.scheduler).from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _base_figures(scores: dict[str, SetScore]) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for name, objects in (("single", 1), ("pair", 2), ("pair_held_out", 2)):
        score = scores[name]
        if name != "pair_held_out":
            for trait in ("colour", "shape", "position"):
                figures[f"{name}.{trait}"] = figure(_rate_tally(getattr(score, trait), score.n * objects))
        figures[f"{name}.all_correct"] = figure(Tally(round(score.correct * score.n), score.n))
    pair = scores["pair"]
    figures["pair.leakage"] = figure(_rate_tally(pair.leakage, pair.n))
    return figures


def _sum(tallies: Sequence[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total = total.merged(tally)
    return total


SEPARATION_FIGURES = (
    "attention_in_mask.without_loss",
    "attention_in_mask.with_loss",
    "leakage.without_loss",
    "leakage.with_loss",
)


def _separation_figures(
    components: SDComponents, plan: EvalPlan, pairs: Sequence[tuple[world.Concept, world.Concept]], *, seed: int
) -> dict[str, Figure]:
    """Both arms of the separation comparison: same examples, masks and seeds; only the loss weight differs."""
    figures: dict[str, Figure] = {}
    names = dict.fromkeys([*plan.concepts, *(c.name for pair in pairs for c in pair)])
    for arm, weight in (("without_loss", 0.0), ("with_loss", SEPARATION_LOSS_WEIGHT)):
        adapters = {
            name: learn_concept(
                components, world.concept(name), recipe=plan.recipe, seed=seed + index, separation_loss_weight=weight
            )
            for index, name in enumerate(names)
        }
        shares = MeanShare()
        for index, name in enumerate(plan.concepts):
            measured = attention_in_mask(
                components,
                adapters[name],
                world.concept(name),
                images=plan.attention_images,
                seed=seed + 50_000 + index,
            )
            shares.values.extend(measured.values)
        fused = measure_pairs(
            components,
            adapters,
            pairs,
            samples_per_pair=plan.pair_samples,
            seed=seed + 900_000,
            methods=("regional",),
            recipe=plan.recipe,
        )
        figures[f"attention_in_mask.{arm}"] = mean_figure(shares)
        figures[f"leakage.{arm}"] = figure(fused["regional"].leakage)
    return {name: figures[name] for name in SEPARATION_FIGURES}


def run_shapes_eval(
    components: SDComponents, *, quick: bool, seed: int, plan: EvalPlan | None = None
) -> dict[str, Any]:
    """Measure the loaded model and return the report (the ``eval/shapes.json`` structure).

    Args:
        components: the model to measure (normally the shipped ``shapes`` preset); left as found.
        quick: the small plan that ``make test`` runs (``QUICK_PLAN``) instead of ``FULL_PLAN``.
        seed: seeds every drawn image, training run and sample.
        plan: overrides the plan ``quick`` picks (tests use a smaller one).

    Returns:
        ``{"version", "preset", "base_model_id", "quick", "seed", "plan", "seconds", "definitions", <section>:
        {<figure>: Figure}}`` for the sections in ``SECTIONS``.
    """
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    recipe = plan.recipe
    seconds: dict[str, float] = {}

    started = time.monotonic()
    scores = evaluate_base_model(
        base_pipeline(components),
        single_repeats=plan.single_repeats,
        pair_repeats=plan.pair_repeats,
        seed=seed,
        guidance_scale=recipe.guidance_scale,
        num_inference_steps=recipe.num_inference_steps,
    )
    seconds["base_model"] = time.monotonic() - started

    started = time.monotonic()
    needed = dict.fromkeys([*plan.concepts, *(name for pair in plan.pairs for name in pair)])
    adapters = {
        name: learn_concept(components, world.concept(name), recipe=recipe, seed=seed + index)
        for index, name in enumerate(needed)
    }
    seconds["concept_training"] = time.monotonic() - started

    started = time.monotonic()
    learning: dict[str, Figure] = {}
    per_concept = {
        name: measure_concept(
            components,
            adapters[name],
            world.concept(name),
            samples=plan.concept_samples,
            seed=seed + 100_000 * (index + 1),
            recipe=recipe,
        )
        for index, name in enumerate(plan.concepts)
    }
    learning["fidelity"] = figure(_sum([s.fidelity for s in per_concept.values()]))
    learning["position_following"] = figure(_sum([s.position for s in per_concept.values()]))
    for name, concept_scores in per_concept.items():
        learning[f"fidelity.{name}"] = figure(concept_scores.fidelity)
        learning[f"position_following.{name}"] = figure(concept_scores.position)
    seconds["concept_sampling"] = time.monotonic() - started

    started = time.monotonic()
    pairs = [(world.concept(a), world.concept(b)) for a, b in plan.pairs]
    fused = measure_pairs(
        components, adapters, pairs, samples_per_pair=plan.pair_samples, seed=seed + 900_000, recipe=recipe
    )
    seconds["fusion"] = time.monotonic() - started

    fusion: dict[str, Figure] = {}
    for kind in ("binding", "concept_binding", "leakage"):
        for method in FUSION_METHODS:
            fusion[f"{kind}.{method}"] = figure(getattr(fused[method], kind))

    started = time.monotonic()
    separation = {name: missing(NOT_IN_QUICK_PLAN) for name in SEPARATION_FIGURES}
    if plan.separation:
        separation = _separation_figures(components, plan, pairs, seed=seed)
    seconds["separation"] = time.monotonic() - started

    return {
        "version": REPORT_VERSION,
        "preset": components.preset,
        "base_model_id": components.base_model_id,
        "quick": quick,
        "seed": seed,
        "plan": plan_json(plan),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "definitions": DEFINITIONS,
        "base_model": _base_figures(scores),
        "concept_learning": learning,
        "separation": separation,
        "fusion": fusion,
    }


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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m core.ml.shapes.eval_report``: run the evaluation, write the JSON, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("eval/shapes.json"))
    parser.add_argument("--quick", action="store_true", help="the small subset that make test runs")
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--models-root", type=Path, default=Path("data/models"), help="for presets not shipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models run best on one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    components = load_components(args.preset, args.models_root)
    report = run_shapes_eval(components, quick=args.quick, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    # A command-line entry point: the table is its output.
    print(format_table(report))


if __name__ == "__main__":
    main()
