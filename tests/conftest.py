"""Shared fixtures: a private redis-server per test session, settings for tests, and offline hubs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# Any accidental download of weights fails at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from services.processes import start_redis
from tests.reliability import ledger


def pytest_configure(config: pytest.Config) -> None:
    """The controller (not an xdist worker) names the folder where the reliability suite records what it tried."""
    if not hasattr(config, "workerinput"):
        import tempfile

        os.environ[ledger.ENV] = tempfile.mkdtemp(prefix="tessera-reliability-")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: the reliability suite's scenarios, jobs lost or doubled, hostile inputs and tenant crossings."""
    folder = os.environ.get(ledger.ENV)
    if folder and not hasattr(terminalreporter.config, "workerinput"):
        line = ledger.summary_line(Path(folder))
        if line:
            terminalreporter.write_sep("=", "reliability")
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (stable otherwise): on two workers (``make test``) the longest ones start at once and the
    fast tests fill the other worker, instead of a long test starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port for the whole session (the machine's own Redis is not used)."""
    child, url = start_redis(tmp_path_factory.mktemp("redis"), persist=False)
    try:
        yield url
    finally:
        child.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
