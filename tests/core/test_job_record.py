"""The job state machine, checked exhaustively and with a stateful property test."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from core.errors import InvalidTransitionError
from core.job_record import TERMINAL, TRANSITIONS, check_transition

STATUSES = list(TRANSITIONS)


@pytest.mark.parametrize(("old", "new"), list(itertools.product(STATUSES, STATUSES)))
def test_transition_table(old: str, new: str) -> None:
    allowed = {
        ("queued", "running"),
        ("queued", "canceled"),
        ("queued", "failed"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "canceled"),
        ("running", "queued"),
    }
    if (old, new) in allowed:
        check_transition("job_x", old, new)  # type: ignore[arg-type]
    else:
        with pytest.raises(InvalidTransitionError, match=f"{old} -> {new}"):
            check_transition("job_x", old, new)  # type: ignore[arg-type]


class JobLife(RuleBasedStateMachine):
    """Whatever order of attempted moves: terminal is forever, and only table moves happen."""

    def __init__(self) -> None:
        super().__init__()
        self.status = "queued"
        self.was_terminal = False

    @rule(new=st.sampled_from(STATUSES))
    def attempt(self, new: str) -> None:
        try:
            check_transition("job_x", self.status, new)  # type: ignore[arg-type]
        except InvalidTransitionError:
            assert new not in TRANSITIONS[self.status]  # type: ignore[index]
            return
        assert not self.was_terminal
        self.status = new
        self.was_terminal = new in TERMINAL

    @invariant()
    def terminal_has_no_exit(self) -> None:
        if self.status in TERMINAL:
            assert not TRANSITIONS[self.status]  # type: ignore[index]


TestJobLife = JobLife.TestCase


def test_queue_time_stops_when_a_queued_job_is_canceled() -> None:
    from datetime import timedelta

    from core.job_record import JobRecord

    created = datetime(2026, 1, 1, tzinfo=UTC)
    record = JobRecord(
        id="job_x",
        tenant="t",
        kind="training",
        queue="train",
        input={},
        created_at=created,
        status="canceled",
        completed_at=created + timedelta(seconds=3),
    )
    later = created + timedelta(hours=5)
    job = record.to_public(base_url="http://x", progress=None, queue_position=None, now=later)
    assert job.metrics.queue_seconds == 3.0 and job.metrics.run_seconds is None
