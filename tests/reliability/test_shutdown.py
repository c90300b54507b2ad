"""What a GPU worker does on SIGTERM is the setting's choice: hand the job back (default) or finish it."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.signals import worker_shutting_down

from core.config import Settings
from services.worker.app import make_celery


@pytest.mark.parametrize(("choice", "added"), [("hand_back", 1), ("finish", 0)])
def test_the_shutdown_hook_follows_the_setting(redis_url: str, tmp_path: Path, choice: str, added: int) -> None:
    settings = Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects"},
        models={"preset": "tiny", "root": tmp_path / "models"},
        worker={"on_sigterm": choice, "metrics_port": 0},
    )
    before = len(worker_shutting_down.receivers)
    make_celery(settings, queues=["train", "generate"])
    assert len(worker_shutting_down.receivers) - before == added
