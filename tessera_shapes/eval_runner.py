"""Running the shapes evaluation: the figures of each section (scorer, decoder ceiling, base model, concept
learning, fusion, separation), the training seeds spread over worker processes, and :func:`run_shapes_eval`,
which gathers them into the report."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from core.ml.components import SDComponents
from tessera_shapes import world
from tessera_shapes.calibration import scorer_calibration
from tessera_shapes.concept_measures import (
    ConceptScores,
    MeanShare,
    PairScores,
    Tally,
    attention_in_mask,
    measure_concept,
    measure_pairs,
)
from tessera_shapes.eval_plan import (
    DEFINITIONS,
    FULL_PLAN,
    NOT_IN_PLAN,
    QUICK_PLAN,
    REPORT_VERSION,
    SEPARATION_LOSS_WEIGHT,
    Arm,
    EvalPlan,
    Figure,
    plan_json,
    target_figures,
)
from tessera_shapes.evaluation import SetScore, decoder_ceiling, evaluate_base_model
from tessera_shapes.personalization import FUSION_METHODS, FusionMethod, learn_concept


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
