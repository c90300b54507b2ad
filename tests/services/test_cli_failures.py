"""The ``tessera`` command as a user meets its failures: one line on stderr, its own exit code, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from services import failures
from services.cli import app
from services.processes import Child, free_port, python_module, wait_for


def _tessera(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def _one_line(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: "), done.stderr
    for word in words:
        assert word in lines[0]


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("tessera ") and result.stdout.strip() != "tessera"


def test_redis_unreachable_is_one_line_and_exit_3() -> None:
    port = free_port()  # nothing listens there
    done = _tessera("keys", "list", env={"TESSERA_REDIS__URL": f"redis://127.0.0.1:{port}/0"})
    _one_line(done, failures.EXIT_REDIS, "cannot reach Redis", str(port), "TESSERA_REDIS__URL")


def test_debug_shows_the_traceback() -> None:
    port = free_port()
    done = _tessera("--debug", "keys", "list", env={"TESSERA_REDIS__URL": f"redis://127.0.0.1:{port}/0"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConnectionError" in done.stderr


def test_api_unreachable_is_one_line_and_exit_4(tmp_path: Path) -> None:
    port = free_port()
    done = _tessera("demo", "--url", f"http://127.0.0.1:{port}", "--api-key", "k", "--out", str(tmp_path))
    _one_line(done, failures.EXIT_API, "cannot reach the API", f"127.0.0.1:{port}")


def test_missing_weights_are_one_line_and_exit_6(tmp_path: Path) -> None:
    done = _tessera("models", "init", "--preset", "sd15", "--root", str(tmp_path))
    _one_line(done, failures.EXIT_MODELS, "sd15", "tessera models pull sd15")


def test_unknown_preset_is_a_usage_error_naming_the_choices() -> None:
    result = CliRunner().invoke(app, ["serve", "--preset", "sd21"])
    assert result.exit_code == 2
    assert "sd21" in result.output and "tiny" in result.output and "shapes" in result.output


def test_models_pull_takes_the_preset_as_an_argument() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["models", "pull", "sd15", "--help"]).exit_code == 0
    clash = runner.invoke(app, ["models", "pull", "sd15", "--preset", "tiny"])
    assert clash.exit_code == 2 and "disagree" in clash.output


@pytest.mark.slow
def test_refused_key_is_one_line_and_exit_5(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TESSERA_REDIS__URL": redis_url,
        "TESSERA_STORAGE__ROOT": str(tmp_path / "objects"),
        "TESSERA_API_KEYS": "acme:the-right-key",
    }
    api = Child(
        "api",
        python_module(
            "uvicorn", "services.api.app:create_app", "--factory", "--port", str(port), "--log-level", "warning"
        ),
        env=env,
    )
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200, what="api", child=api
        )
        done = _tessera("demo", "--url", f"http://127.0.0.1:{port}", "--api-key", "wrong", "--out", str(tmp_path))
    finally:
        api.stop()
    _one_line(done, failures.EXIT_AUTH, "refused the key", "TESSERA_API_KEY")
