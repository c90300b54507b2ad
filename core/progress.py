"""Progress reports that long work (training, sampling) hands to its caller, step by step, and how a job's stages
add up to one overall progress object.

Pipelines never talk to Redis: they call a ``StepCallback`` after every step. The caller records the
progress and raises ``JobCanceledError`` from inside the callback when a cancel was requested, which
unwinds the pipeline at a step boundary before anything is uploaded.

A job runs a fixed sequence of stages (its ``StagePlan``); each stage carries a weight, its expected share of the
job's run time. The ``ProgressTracker`` turns "stage X, step i of n" into the public ``JobProgress``:

- ``fraction`` = the weights of the stages before the current one + the current weight x its ``stage_fraction``;
  it never decreases while the job runs.
- ``eta_seconds`` extrapolates the time spent so far by ``fraction``, smoothed so that it falls steadily and rises
  only a little per report (see ``ProgressTracker.eta``).

A succeeded job's progress is ``DONE`` (``stage="done"``, every fraction 1.0, ETA 0); a failed or canceled job keeps
the values it last reached, with no ETA (``terminal_progress``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from core.resources import JobKind, JobProgress, JobStatus


@dataclass(frozen=True)
class Progress:
    """One step of one stage.

    Args:
        stage: what runs now, e.g. ``"masking"``, ``"training"``, ``"sampling"``, ``"uploading"``.
        step: steps finished in this stage (1-based once the first step is done).
        total_steps: steps this stage will take.
    """

    stage: str
    step: int
    total_steps: int

    @property
    def fraction(self) -> float:
        return 0.0 if self.total_steps <= 0 else min(1.0, self.step / self.total_steps)


StepCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """A callback that ignores every report (for direct, unsupervised pipeline calls)."""


# ---- stage plans ---------------------------------------------------------------------------------------------

# Every stage a job kind can run, in order, with its expected share of the job's run time (relative weights; a plan
# renormalises over the stages it keeps). The shares are those of a default-sized job on a GPU: training time is
# dominated by the optimisation steps, generation by sampling and, when asked for, styling.
STAGE_WEIGHTS: dict[JobKind, tuple[tuple[str, float], ...]] = {
    "training": (
        ("downloading", 0.02),
        ("loading", 0.05),
        ("masking", 0.08),  # only when some image has no uploaded mask (Segment Anything runs)
        ("compositing", 0.02),  # only with composites (Seg-Mix)
        ("training", 0.75),
        ("diagnosing", 0.05),
        ("uploading", 0.03),
    ),
    "generation": (
        ("loading", 0.10),
        ("sampling", 0.60),
        ("styling", 0.25),  # only with a style
        ("uploading", 0.05),
    ),
}

# Stages a job runs only when its request asks for them; every other stage always runs.
OPTIONAL_STAGES: dict[JobKind, frozenset[str]] = {
    "training": frozenset({"masking", "compositing"}),
    "generation": frozenset({"styling"}),
}

DONE_STAGE = "done"
"""The stage a succeeded job's progress reports."""

DONE = JobProgress(fraction=1.0, stage=DONE_STAGE, stage_fraction=1.0, step=1, total_steps=1, eta_seconds=0.0)
"""The final progress of every succeeded job."""


@dataclass(frozen=True)
class StagePlan:
    """The stages one job will run, in order, with weights that sum to 1.

    Args:
        stages: ``(name, weight)`` pairs in run order; weights are shares of the whole job, summing to 1.
    """

    stages: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        total = sum(w for _, w in self.stages)
        if self.stages and not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"stage weights must sum to 1, got {total}")

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.stages]

    def span(self, stage: str) -> tuple[float, float] | None:
        """``(start, weight)`` of ``stage``: the share of the job done when it begins, and its own share.

        None for a stage the plan does not know (it then moves no fraction).
        """
        start = 0.0
        for name, weight in self.stages:
            if name == stage:
                return start, weight
            start += weight
        return None


def stage_plan(kind: JobKind, *, skip: Collection[str] = ()) -> StagePlan:
    """The plan of a ``kind`` job without the optional stages in ``skip``, its weights renormalised to sum to 1.

    Only optional stages (``OPTIONAL_STAGES``) may be skipped; naming another is a programming error.
    """
    unknown = set(skip) - OPTIONAL_STAGES[kind]
    if unknown:
        raise ValueError(f"{kind} jobs always run {sorted(unknown)}")
    kept = [(name, weight) for name, weight in STAGE_WEIGHTS[kind] if name not in skip]
    total = sum(w for _, w in kept)
    return StagePlan(tuple((name, weight / total) for name, weight in kept))


def training_plan(*, masking: bool, compositing: bool) -> StagePlan:
    """A training's stages: masking only when Segment Anything runs, compositing only with composites."""
    skip = [name for name, runs in (("masking", masking), ("compositing", compositing)) if not runs]
    return stage_plan("training", skip=skip)


def generation_plan(*, styling: bool) -> StagePlan:
    """A generation's stages: styling only when the request has a style."""
    return stage_plan("generation", skip=() if styling else ("styling",))


# ---- tracking one run ------------------------------------------------------------------------------------------

ETA_MIN_FRACTION = 0.01
"""No ETA before this share of the job is done: the extrapolation from almost nothing is noise."""
ETA_TIME_CONSTANT_S = 3.0
"""Smoothing of the ETA: a new estimate pulls the shown value by ``1 - exp(-dt / tau)`` of the difference, with
``tau`` this many seconds, or a quarter of the time the job has run while that is shorter (a job of a few seconds
would otherwise end before its ETA caught up)."""
ETA_MAX_RISE_S = 1.0
ETA_MAX_RISE_SHARE = 0.1
"""One report may raise the ETA by at most ``max(ETA_MAX_RISE_S, ETA_MAX_RISE_SHARE x the previous ETA)`` seconds."""


class ProgressTracker:
    """The progress of one run of one job, fed with stage starts, steps and ends, read as ``JobProgress``.

    Args:
        plan: the stages this run will go through.
        clock: seconds, monotonic (``time.monotonic``; tests pass their own).
    """

    def __init__(self, plan: StagePlan, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.plan = plan
        self._clock = clock
        self._started = clock()
        self._stage = plan.names[0] if plan.stages else ""
        self._stage_fraction = 0.0
        self._step = 0
        self._total_steps = 0
        self._fraction = 0.0
        self._eta: float | None = None
        self._eta_at = self._started

    def begin(self, stage: str) -> JobProgress:
        """``stage`` starts (every planned stage before it counts as done, whether it ran or not)."""
        return self._move(stage, 0, 1, 0.0)

    def step(self, stage: str, step: int, total_steps: int) -> JobProgress:
        """``step`` of ``total_steps`` of ``stage`` are done."""
        fraction = 0.0 if total_steps <= 0 else min(1.0, max(0.0, step / total_steps))
        return self._move(stage, max(0, step), max(0, total_steps), fraction)

    def end(self, stage: str) -> JobProgress:
        """``stage`` finished."""
        total = max(1, self._total_steps) if stage == self._stage else 1
        return self._move(stage, total, total, 1.0)

    def snapshot(self) -> JobProgress:
        """The current progress (the ETA as of the last report)."""
        return JobProgress(
            fraction=round(self._fraction, 4),
            stage=self._stage,
            stage_fraction=round(self._stage_fraction, 4),
            step=self._step,
            total_steps=self._total_steps,
            eta_seconds=None if self._eta is None else round(self._eta, 1),
        )

    def _move(self, stage: str, step: int, total_steps: int, stage_fraction: float) -> JobProgress:
        self._stage, self._step, self._total_steps, self._stage_fraction = stage, step, total_steps, stage_fraction
        span = self.plan.span(stage)
        if span is not None:
            start, weight = span
            # Never back: a stage the plan places earlier than one already seen (or a repeated stage) holds the bar.
            reached = start + weight * stage_fraction
            # The weights sum to 1 only up to rounding: the end of the last stage is exactly 1.
            reached = 1.0 if reached > 1.0 - 1e-9 else reached
            self._fraction = max(self._fraction, reached)
        self._eta = self.eta(self._clock())
        return self.snapshot()

    def eta(self, now: float) -> float | None:
        """The smoothed ETA in seconds at ``now`` (and the new value to smooth from).

        The raw estimate assumes the rest of the job runs at the pace of what is done: ``elapsed x (1 - f) / f``.
        The shown value counts down with the clock between reports and moves toward the raw estimate with a time
        constant of at most ``ETA_TIME_CONSTANT_S``; a rise is capped per report, so a slow stage lifts it gradually
        instead of making it jump back.
        """
        elapsed = now - self._started
        f = self._fraction
        if f >= 1.0:
            self._eta_at = now
            return 0.0
        if f < ETA_MIN_FRACTION or elapsed <= 0:
            return self._eta
        raw = elapsed * (1.0 - f) / f
        if self._eta is None:
            self._eta_at = now
            return raw
        dt = max(0.0, now - self._eta_at)
        counted_down = max(0.0, self._eta - dt)
        tau = max(0.05, min(ETA_TIME_CONSTANT_S, elapsed / 4))
        pull = 1.0 - math.exp(-dt / tau) if dt > 0 else 0.0
        value = counted_down + pull * (raw - counted_down)
        cap = self._eta + max(ETA_MAX_RISE_S, ETA_MAX_RISE_SHARE * self._eta)
        self._eta_at = now
        return max(0.0, min(value, cap))


def terminal_progress(status: JobStatus, last: JobProgress | None) -> JobProgress | None:
    """The final progress of a job that ended as ``status``, given the last progress it reported.

    Succeeded: ``DONE``. Failed or canceled: the last values, frozen, with no ETA (nothing remains); None when the
    job never reported any (canceled or failed while queued).
    """
    if status == "succeeded":
        return DONE
    if last is None:
        return None
    return last.model_copy(update={"eta_seconds": None})
