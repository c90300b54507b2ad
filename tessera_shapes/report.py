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
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from core.config import PRESET_TRAINING_DEFAULTS
from core.ml.components import SDComponents, load_components
from core.training_options import EDLoRAConfig
from tessera_shapes import world
from tessera_shapes.calibration import scorer_calibration
from tessera_shapes.evaluation import SetScore, decoder_ceiling, evaluate_base_model
from tessera_shapes.figure import render_figure
from tessera_shapes.personalization import (
    FUSION_METHODS,
    SHAPES_RECIPE,
    ConceptScores,
    FusionMethod,
    MeanShare,
    PairScores,
    PersonalizationRecipe,
    Tally,
    attention_in_mask,
    learn_concept,
    measure_concept,
    measure_pairs,
)

logger = logging.getLogger(__name__)

REPORT_VERSION = 2
SECTIONS = ("scorer", "decoder_ceiling", "base_model", "concept_learning", "fusion", "separation")
SEPARATION_LOSS_WEIGHT = (
    PRESET_TRAINING_DEFAULTS["shapes"].separation_loss_weight or EDLoRAConfig().separation_loss_weight
)
"""The with-loss arm's weight: what the service trains the shapes preset with when it has masks (its training
default, 0.1; ``EDLoRAConfig``'s 1.0 turns the ring into a disc, ``core.config.PRESET_TRAINING_DEFAULTS``)."""
NOT_IN_PLAN = "not in this plan (it trains every concept twice more); make eval measures it"
FUSED_METHODS = (
    "stacked",
    "regional",
    "conductor",
    "regional+composites",
    "conductor+composites",
    "conductor+separation",
    "regional+separation",
)
"""Fusion rows of the report, one per (training arm, method): the three methods on concepts trained as a training
request does by default (the concept's own examples, no separation loss); regional and conductor on concepts trained
with Seg-Mix composites beside other objects (``recipe.composites``), and on concepts trained on those composites
with the separation loss (the preset's weight). Same seeds in every arm."""
Arm = Literal["plain", "composites", "separation"]
"""How an arm trains: the default request / plus composites / plus composites and the separation loss."""

Figure = dict[str, Any]

DEFINITIONS = {
    "scorer": (
        "ground_truth = drawn scenes (every colour x scored shape x pattern x position, plus random pairs; crisp and "
        "softened like a decoder) judged fully correct; near_misses = drawn wrong shapes (pinched squares, rounded "
        "diamonds, blobs, stars for triangles, rings without a hole, ...) refused as the shape they pretend to be"
    ),
    "decoder_ceiling": (
        "drawn scenes of each evaluation concept (per position) and pair through the VAE (posterior mean), judged "
        "by the scorer: the most any generation could score"
    ),
    "base_model": (
        "stock pipeline with the preset's default sampling; trait rates are per expected object, all_correct per "
        "image (every object right and nothing extra); class_word_side = 'a triangle on the right' (no colour); "
        "pair = both caption orders pooled; leakage = an object wears the other object's colour or shape"
    ),
    "concept_learning.fidelity": "'a <c>': some object has the concept's colour, shape and pattern",
    "concept_learning.position_following": "'a <c> on the left/right': the concept right in every trait, on that side",
    "fusion.binding": (
        "'a <c1> on the left and a <c2> on the right', every ordered pair (both orders), every training seed: both "
        "right in every trait, each on its side, pooled and per pair"
    ),
    "fusion.concept_binding": "same scenes, per concept: this concept right in every trait on its side",
    "fusion.leakage": "same scenes: an object wears the other concept's colour or shape",
    "fusion.arms": (
        "stacked, regional, conductor: concepts trained as a training request is by default (their own examples, "
        "no separation loss); +composites: trained again with Seg-Mix composites beside base-world objects (exact "
        "masks for both); +separation: on those composites with the separation loss at the preset's weight (0.1)"
    ),
    "separation": (
        "the +composites arm (weight 0) against the +separation arm (same composites and seeds); "
        "attention_in_mask = share of the concept words' cross-attention inside the concept's mask on held-out "
        "scenes with a neighbour (mean over images); "
        "leakage as fusion.leakage, per method and arm"
    ),
}


@dataclass(frozen=True)
class EvalPlan:
    """How many samples each part of the evaluation draws.

    Args:
        single_repeats, pair_repeats: repeats of the base prompt sets (``evaluation.evaluate_base_model``).
        concepts: evaluation concepts learned with ED-LoRA (names from ``world.HELD_OUT_CONCEPTS``); every ordered
            pair of two of them is a fusion pair, so both orders are measured.
        training_seeds: every concept is trained once per seed (and, with ``separation``, twice more per seed: on
            composites, and on composites with the separation loss).
        concept_samples: per concept and seed, images of ``"a <c>"`` for fidelity, and again of
            ``"a <c> on the left/right"`` (split evenly) for position following.
        pair_samples: images per ordered pair, seed and fusion method.
        separation: also train the +composites and +separation arms and report their fusion rows and the
            separation section.
        attention_images: held-out scenes per concept, seed and arm for attention-in-mask.
        ceiling_images: drawn scenes per decoder-ceiling cell.
        scorer_samples: near misses per kind (and random ground-truth pairs) in the scorer's check.
        figure_samples: images per pair and method kept for ``eval/shapes.png`` (first training seed).
        recipe: how concepts are learned and sampled.
    """

    single_repeats: int
    pair_repeats: int
    concepts: tuple[str, ...]
    training_seeds: tuple[int, ...]
    concept_samples: int
    pair_samples: int
    separation: bool = False
    attention_images: int = 8
    ceiling_images: int = 24
    scorer_samples: int = 24
    figure_samples: int = 4
    recipe: PersonalizationRecipe = field(default=SHAPES_RECIPE)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every ordered pair of two evaluation concepts: each pair in both orders."""
        return tuple((a, b) for a in self.concepts for b in self.concepts if a != b)


FULL_PLAN = EvalPlan(
    single_repeats=2,
    pair_repeats=1,
    concepts=world.EVALUATION_CONCEPTS,
    training_seeds=(0, 1, 2),
    concept_samples=16,
    pair_samples=8,
    separation=True,
)
"""``make eval``: 3 training seeds x 2 orders x 8 = 48 pair images per method (more with a third concept)."""
QUICK_PLAN = EvalPlan(
    single_repeats=1,
    pair_repeats=1,
    concepts=world.EVALUATION_CONCEPTS[:2],
    training_seeds=(0,),
    concept_samples=8,
    pair_samples=8,
    ceiling_images=8,
    scorer_samples=4,
    figure_samples=2,
)
"""``make test``: one training seed, one pair in both orders."""


def plan_json(plan: EvalPlan) -> dict[str, Any]:
    """The plan, recipe included, as JSON-ready values."""
    recipe = {**asdict(plan.recipe), "training": plan.recipe.training.model_dump(mode="json")}
    plain = {
        **{f.name: getattr(plan, f.name) for f in fields(plan) if f.name != "recipe"},
        "pairs": plan.pairs,
        "recipe": recipe,
    }
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
    for name, objects in (("single", 1), ("pair", 2)):
        score = scores[name]
        for trait in ("colour", "shape", "position"):
            figures[f"{name}.{trait}"] = figure(_rate_tally(getattr(score, trait), score.n * objects))
    for name in ("single", "class_word_side", "pair", "pair_left_first", "pair_right_first", "pair_held_out"):
        score = scores[name]
        figures[f"{name}.all_correct"] = figure(Tally(round(score.correct * score.n), score.n))
    pair = scores["pair"]
    figures["pair.leakage"] = figure(_rate_tally(pair.leakage, pair.n))
    return figures


def _sum(tallies: Sequence[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total = total.merged(tally)
    return total


def _scorer_figures(plan: EvalPlan, seed: int) -> dict[str, Figure]:
    check = scorer_calibration(seed, plan.scorer_samples)
    figures = {"ground_truth_accepted": _count_figure(check["ground_truth"]["all"])}
    for name, share in check["near_misses"].items():
        figures[f"near_misses_refused.{name}"] = _count_figure(share)
    return figures


def _count_figure(share: dict[str, Any]) -> Figure:
    return figure(Tally(int(share["count"]), int(share["n"])))


def _ceiling_figures(components: SDComponents, plan: EvalPlan) -> dict[str, Figure]:
    concepts = [world.concept(name) for name in plan.concepts]
    pairs = [(world.concept(a), world.concept(b)) for a, b in plan.pairs]
    cells = decoder_ceiling(components.vae, concepts, pairs, images_per_cell=plan.ceiling_images)
    return {name: figure(Tally(hits, n)) for name, (hits, n) in cells.items()}


@dataclass
class _Arm:
    """One training arm over every seed: per-concept scores, fusion scores, attention-in-mask shares."""

    concepts: dict[str, ConceptScores] = field(default_factory=dict)
    fusion: dict[str, PairScores] = field(default_factory=dict)
    attention: MeanShare = field(default_factory=MeanShare)


@dataclass(frozen=True)
class _SeedJob:
    """One training seed of one arm: train every concept as ``arm`` says, then measure."""

    arm: Arm
    methods: tuple[FusionMethod, ...]
    seed_index: int
    training_seed: int
    measure_concepts: bool


def _run_seed(components: SDComponents, plan: EvalPlan, job: _SeedJob, seed: int) -> tuple[_Arm, dict[str, float]]:
    """Trains every concept once for ``job`` and measures it: the arm's share from this seed, and its seconds."""
    arm, seconds = _Arm(), {}
    pairs = [(world.concept(a), world.concept(b)) for a, b in plan.pairs]
    recipe = plan.recipe if job.arm != "plain" else replace(plan.recipe, composites=0)
    started = time.monotonic()
    adapters = {
        name: learn_concept(
            components,
            world.concept(name),
            recipe=recipe,
            seed=seed + 1_000 * job.training_seed + index,
            separation_loss_weight=SEPARATION_LOSS_WEIGHT if job.arm == "separation" else 0.0,
        )
        for index, name in enumerate(plan.concepts)
    }
    seconds["concept_training"] = time.monotonic() - started
    started = time.monotonic()
    for index, name in enumerate(plan.concepts):
        concept = world.concept(name)
        if job.measure_concepts:
            arm.concepts[name] = measure_concept(
                components,
                adapters[name],
                concept,
                samples=plan.concept_samples,
                seed=seed + 100_000 * (index + 1) + 10 * job.training_seed,
                recipe=plan.recipe,
            )
        shares = attention_in_mask(
            components,
            adapters[name],
            concept,
            images=plan.attention_images,
            seed=seed + 50_000 + 100 * index + job.training_seed,
        )
        arm.attention.values.extend(shares.values)
    seconds["concept_sampling"] = time.monotonic() - started
    started = time.monotonic()
    fused = measure_pairs(
        components,
        adapters,
        pairs,
        samples_per_pair=plan.pair_samples,
        seed=seed + 900_000 + 10_000 * job.training_seed,
        methods=job.methods,
        recipe=plan.recipe,
        keep=plan.figure_samples if job.seed_index == 0 else 0,
    )
    arm.fusion = {str(method): scores for method, scores in fused.items()}
    seconds["fusion"] = time.monotonic() - started
    return arm, seconds


def _merge_arms(parts: Sequence[_Arm]) -> _Arm:
    """The arm over every seed, from its per-seed parts in seed order (kept figure samples: the first seed's)."""
    arm = _Arm()
    for part in parts:
        for name, scores in part.concepts.items():
            previous = arm.concepts.get(name, ConceptScores())
            arm.concepts[name] = ConceptScores(
                previous.fidelity.merged(scores.fidelity), previous.position.merged(scores.position)
            )
        arm.attention.values.extend(part.attention.values)
        for method, fused in part.fusion.items():
            known = arm.fusion.get(method)
            arm.fusion[method] = fused if known is None else known.merged(fused)
    return arm


# Per worker process of a parallel evaluation: the model it loaded and the plan (set by _start_worker).
_WORKER: dict[str, Any] = {}


def _start_worker(load: Callable[[], SDComponents], plan: EvalPlan, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["components"], _WORKER["plan"] = load(), plan


def _worker_seed(job: _SeedJob, seed: int) -> tuple[_Arm, dict[str, float]]:
    return _run_seed(_WORKER["components"], _WORKER["plan"], job, seed)


def _worker_base(plan: EvalPlan, seed: int) -> dict[str, SetScore]:
    return _base_scores(_WORKER["components"], plan, seed)


def _base_scores(components: SDComponents, plan: EvalPlan, seed: int) -> dict[str, SetScore]:
    return evaluate_base_model(
        base_pipeline(components),
        single_repeats=plan.single_repeats,
        pair_repeats=plan.pair_repeats,
        seed=seed,
        guidance_scale=plan.recipe.guidance_scale,
        num_inference_steps=plan.recipe.num_inference_steps,
    )


def _fusion_figures(rows: dict[str, PairScores]) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    for method, scores in rows.items():
        figures[f"binding.{method}"] = figure(scores.binding)
        for pair, tally in scores.per_pair.items():
            figures[f"binding.{method}.{pair}"] = figure(tally)
        figures[f"concept_binding.{method}"] = figure(scores.concept_binding)
        figures[f"leakage.{method}"] = figure(scores.leakage)
    return figures


def run_shapes_eval(
    components: SDComponents,
    *,
    quick: bool,
    seed: int,
    plan: EvalPlan | None = None,
    workers: int = 1,
    load: Callable[[], SDComponents] | None = None,
) -> tuple[dict[str, Any], dict[str, PairScores]]:
    """Measure the loaded model and return the report (the ``eval/shapes.json`` structure) and the fusion rows
    (with the samples kept for the figure).

    Args:
        components: the model to measure (normally the shipped ``shapes`` preset); left as found.
        quick: the small plan that ``make test`` runs (``QUICK_PLAN``) instead of ``FULL_PLAN``.
        seed: seeds every drawn image, training run and sample.
        plan: overrides the plan ``quick`` picks (tests use a smaller one).
        workers: processes that run the base-model check and the (arm, training seed) jobs side by side; each
            loads the model with ``load`` (picklable, e.g. ``functools.partial(load_components, preset, root)``)
            and takes ``torch.get_num_threads() // workers`` threads. Every job seeds itself, so the figures do
            not depend on how jobs are spread (beyond float rounding at another thread count).

    Returns:
        ``({"version", "preset", "base_model_id", "quick", "seed", "plan", "seconds", "definitions", <section>:
        {<figure>: Figure}}, {fusion row: PairScores})`` for the sections in ``SECTIONS``.
    """
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    seconds: dict[str, float] = {}

    started = time.monotonic()
    scorer_figures = _scorer_figures(plan, seed)
    ceiling = _ceiling_figures(components, plan)
    seconds["scorer_and_ceiling"] = time.monotonic() - started

    jobs = [
        _SeedJob("plain", FUSION_METHODS, i, training_seed, measure_concepts=True)
        for i, training_seed in enumerate(plan.training_seeds)
    ]
    if plan.separation:
        jobs += [
            _SeedJob(arm, ("conductor", "regional"), i, training_seed, measure_concepts=False)
            for arm in ("composites", "separation")
            for i, training_seed in enumerate(plan.training_seeds)
        ]
    started = time.monotonic()
    if workers > 1:
        if load is None:
            raise ValueError("a parallel evaluation (workers > 1) needs `load` to build the model in each worker")
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, context, initializer=_start_worker, initargs=(load, plan, threads)) as pool:
            base_future = pool.submit(_worker_base, plan, seed)
            results = list(pool.map(_worker_seed, jobs, [seed] * len(jobs)))
            scores = base_future.result()
    else:
        scores = _base_scores(components, plan, seed)
        seconds["base_model"] = time.monotonic() - started
        results = [_run_seed(components, plan, job, seed) for job in jobs]
    seconds["wall_after_ceiling"] = time.monotonic() - started
    for _, job_seconds in results:  # summed over workers: CPU time per part, not wall time
        for part, value in job_seconds.items():
            seconds[part] = seconds.get(part, 0.0) + value
    arms = {
        name: _merge_arms([arm for (arm, _), job in zip(results, jobs, strict=True) if job.arm == name])
        for name in ("plain", "composites", "separation")
    }
    plain = arms["plain"]
    learning: dict[str, Figure] = {
        "fidelity": figure(_sum([s.fidelity for s in plain.concepts.values()])),
        "position_following": figure(_sum([s.position for s in plain.concepts.values()])),
    }
    for name, concept_scores in plain.concepts.items():
        learning[f"fidelity.{name}"] = figure(concept_scores.fidelity)
        learning[f"position_following.{name}"] = figure(concept_scores.position)

    rows: dict[str, PairScores] = dict(plain.fusion)
    separation: dict[str, Figure] = {}
    if plan.separation:
        # The loss's effect: the same composites and seeds, weight 0 against the preset's weight.
        for method in ("regional", "conductor"):
            rows[f"{method}+composites"] = arms["composites"].fusion[method]
        for method in ("conductor", "regional"):
            rows[f"{method}+separation"] = arms["separation"].fusion[method]
        separation["attention_in_mask.without_loss"] = mean_figure(arms["composites"].attention)
        separation["attention_in_mask.with_loss"] = mean_figure(arms["separation"].attention)
        for method in ("conductor", "regional"):
            separation[f"leakage.{method}.without_loss"] = figure(rows[f"{method}+composites"].leakage)
            separation[f"leakage.{method}.with_loss"] = figure(rows[f"{method}+separation"].leakage)
    else:
        for name in ("attention_in_mask.without_loss", "attention_in_mask.with_loss"):
            separation[name] = missing(NOT_IN_PLAN)
        for method in ("conductor", "regional"):
            for loss in ("without_loss", "with_loss"):
                separation[f"leakage.{method}.{loss}"] = missing(NOT_IN_PLAN)

    report = {
        "version": REPORT_VERSION,
        "preset": components.preset,
        "base_model_id": components.base_model_id,
        "quick": quick,
        "seed": seed,
        "plan": plan_json(plan),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "definitions": DEFINITIONS,
        "scorer": scorer_figures,
        "decoder_ceiling": ceiling,
        "base_model": _base_figures(scores),
        "concept_learning": learning,
        "fusion": _fusion_figures(rows),
        "separation": separation,
    }
    report["targets"] = target_figures(report)
    return report, rows


TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("conductor_pair_binding", "fusion", "binding.conductor", 0.7),
    ("regional_pair_binding", "fusion", "binding.regional", 0.6),
    ("conductor_separation_leakage", "separation", "leakage.conductor.with_loss", 0.05),
    ("base_pair_all_correct", "base_model", "pair.all_correct", 0.95),
    ("base_pair_leakage", "base_model", "pair.leakage", 0.01),
    ("scorer_ground_truth_accepted", "scorer", "ground_truth_accepted", 0.99),
    ("scorer_near_misses_refused", "scorer", "near_misses_refused.pooled", 0.95),
)
"""The headline figures the composition issue sets goals for: (name, section, figure, goal). Leakage goals are
upper bounds, the rest lower bounds. Per-pair rows (``binding.conductor.<pair>``) and the composite arms
(``binding.conductor+composites``) are not these figures."""


def target_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Each headline figure of ``TARGETS`` with its goal and whether it is met (None when not measured)."""
    out: dict[str, Any] = {}
    for name, section, key, goal in TARGETS:
        fig = report[section][key]
        upper = "leakage" in key
        value = fig["value"]
        met = None if value is None else (value <= goal if upper else value >= goal)
        out[name] = {**fig, "figure": f"{section}.{key}", "goal": f"{'<=' if upper else '>='} {goal}", "met": met}
    return out


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
