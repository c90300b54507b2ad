"""Progress reports that long work (training, sampling) hands to its caller, step by step.

Pipelines never talk to Redis: they call a ``StepCallback`` after every step. The caller records the
progress and raises ``JobCanceledError`` from inside the callback when a cancel was requested, which
unwinds the pipeline at a step boundary before anything is uploaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
