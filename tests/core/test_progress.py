"""Overall progress across stages: plans and their weights, a fraction that never goes back, a smoothed ETA."""

from __future__ import annotations

import itertools
import math

import pytest

from core.progress import (
    DONE,
    ETA_MAX_RISE_S,
    ETA_MAX_RISE_SHARE,
    STAGE_WEIGHTS,
    ProgressTracker,
    StagePlan,
    generation_plan,
    stage_plan,
    terminal_progress,
    training_plan,
)
from core.resources import JobProgress


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plans_keep_only_the_stages_a_job_runs_and_their_weights_sum_to_one() -> None:
    full = training_plan(masking=True, compositing=True)
    assert full.names == [name for name, _ in STAGE_WEIGHTS["training"]]
    bare = training_plan(masking=False, compositing=False)
    assert bare.names == ["downloading", "loading", "training", "diagnosing", "uploading"]
    assert generation_plan(styling=True).names == ["loading", "sampling", "styling", "uploading"]
    plain = generation_plan(styling=False)
    assert plain.names == ["loading", "sampling", "uploading"]
    for plan in (full, bare, plain):
        assert math.isclose(sum(w for _, w in plan.stages), 1.0)
    # Renormalised, the kept stages keep their ratios.
    weights = dict(plain.stages)
    assert math.isclose(weights["sampling"] / weights["loading"], 0.60 / 0.10)
    with pytest.raises(ValueError, match="always run"):
        stage_plan("generation", skip=["sampling"])
    with pytest.raises(ValueError, match="sum to 1"):
        StagePlan((("a", 0.5), ("b", 0.4)))


def test_fraction_adds_up_stage_weights_and_the_stage_has_its_own_fraction() -> None:
    plan = generation_plan(styling=False)
    weights = dict(plan.stages)
    tracker = ProgressTracker(plan, clock=Clock())
    assert tracker.begin("loading").fraction == 0.0
    after_loading = tracker.end("loading")
    assert after_loading.fraction == pytest.approx(weights["loading"], abs=1e-4)
    assert after_loading.stage == "loading" and after_loading.stage_fraction == 1.0
    tracker.begin("sampling")
    half = tracker.step("sampling", 2, 4)
    assert half.stage == "sampling" and half.stage_fraction == 0.5 and (half.step, half.total_steps) == (2, 4)
    assert half.fraction == pytest.approx(weights["loading"] + weights["sampling"] / 2, abs=1e-4)
    tracker.end("sampling")
    tracker.begin("uploading")
    assert tracker.end("uploading").fraction == 1.0


def test_fraction_never_goes_back() -> None:
    plan = training_plan(masking=True, compositing=False)
    tracker = ProgressTracker(plan, clock=Clock())
    seen = [tracker.begin("downloading").fraction, tracker.end("downloading").fraction]
    # The masking stage was planned but skipped (every image had a mask after all): training starts past it.
    seen.append(tracker.begin("training").fraction)
    start, _ = plan.span("training") or (0.0, 0.0)
    assert seen[-1] == pytest.approx(start, abs=1e-4)
    seen += [tracker.step("training", s, 6).fraction for s in range(1, 7)]
    # A stage reported out of order, a repeated stage and a stage the plan does not know hold the bar.
    seen.append(tracker.begin("loading").fraction)
    seen.append(tracker.begin("unplanned").fraction)
    assert tracker.snapshot().stage == "unplanned" and tracker.snapshot().stage_fraction == 0.0
    seen.append(tracker.step("training", 1, 6).fraction)
    assert seen == sorted(seen), seen
    assert len(set(seen)) > 6


def test_eta_counts_down_converges_and_rises_only_a_little_per_report() -> None:
    clock = Clock()
    # Loading is weighted at 10% but takes far less than its share; sampling then takes much longer than the
    # first estimate expects: the ETA has to rise, and it may do so only gradually.
    tracker = ProgressTracker(generation_plan(styling=False), clock=clock)
    etas: list[float | None] = [tracker.begin("loading").eta_seconds]
    clock.now += 0.5
    etas.append(tracker.end("loading").eta_seconds)
    tracker.begin("sampling")
    for step in range(1, 101):
        clock.now += 0.2
        etas.append(tracker.step("sampling", step, 100).eta_seconds)
    assert etas[0] is None  # nothing done yet: no estimate
    known = [e for e in etas if e is not None]
    assert len(known) > 90
    for before, after in itertools.pairwise(known):
        assert after <= before + max(ETA_MAX_RISE_S, ETA_MAX_RISE_SHARE * before) + 0.1, (before, after)
    # Mid-sampling, at a steady pace, the smoothed estimate is near the real remaining time: 50 steps x 0.2 s of
    # sampling plus the uploading share.
    mid = known[len(known) // 2]
    assert 5.0 < mid < 25.0, mid
    tracker.end("sampling")
    tracker.begin("uploading")
    clock.now += 0.3
    assert tracker.end("uploading").eta_seconds == 0.0


def test_eta_falls_with_the_clock_between_estimates() -> None:
    clock = Clock()
    tracker = ProgressTracker(generation_plan(styling=False), clock=clock)
    tracker.begin("loading")
    clock.now += 1.0
    tracker.end("loading")
    tracker.begin("sampling")
    first = tracker.step("sampling", 1, 10).eta_seconds
    clock.now += 2.0
    # The same fraction two seconds later: the raw estimate grew, the shown value may barely rise above it.
    later = tracker.step("sampling", 1, 10).eta_seconds
    assert first is not None and later is not None
    assert later <= first + max(ETA_MAX_RISE_S, ETA_MAX_RISE_SHARE * first)


def test_terminal_progress() -> None:
    reached = JobProgress(fraction=0.42, stage="training", stage_fraction=0.3, step=3, total_steps=10, eta_seconds=7.0)
    assert terminal_progress("succeeded", reached) == DONE
    assert terminal_progress("succeeded", None) == DONE
    assert DONE.fraction == 1.0 and DONE.stage == "done" and DONE.stage_fraction == 1.0 and DONE.eta_seconds == 0.0
    for status in ("failed", "canceled"):
        frozen = terminal_progress(status, reached)  # type: ignore[arg-type]
        assert frozen is not None and frozen.eta_seconds is None
        assert frozen.model_dump(exclude={"eta_seconds"}) == reached.model_dump(exclude={"eta_seconds"})
        assert terminal_progress(status, None) is None  # type: ignore[arg-type]
