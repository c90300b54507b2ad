"""CLI commands that run in-process (eval, models init, keys, the shapes tools) and the JSON log format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from core.ml.metrics.tiny import build_tiny_eval_encoders
from services import logs
from services.cli import app


def test_eval_concept_prints_the_three_scores(tmp_path: Path) -> None:
    encoders = build_tiny_eval_encoders(tmp_path / "encoders")
    for folder, color in (("generated", (200, 30, 30)), ("references", (190, 40, 30))):
        (tmp_path / folder).mkdir()
        for i in range(2):
            Image.new("RGB", (48, 48), color).save(tmp_path / folder / f"{i}.png")
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "concept",
            "--encoders",
            str(encoders),
            "--generated",
            str(tmp_path / "generated"),
            "--references",
            str(tmp_path / "references"),
            "--prompt",
            "a <rex> on the beach",
            "--class-word",
            "dog",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert {"clip_t", "clip_i", "dino"} <= set(scores) and scores["n_images"] == 2
    assert 0.0 <= scores["clip_t"] <= 2.5 and scores["clip_i"] > 0.9


def test_models_init_builds_tiny(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "init", "--preset", "tiny", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny" / "unet" / "config.json").exists()
    missing = CliRunner().invoke(app, ["models", "init", "--preset", "sd15", "--root", str(tmp_path)])
    assert missing.exit_code != 0 and "sd15" in str(missing.exception)


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["shapes", "train"], "--unet-steps"),
        (["shapes", "eval"], "--quick"),
        (["shapes", "calibrate"], "--per-kind"),
        (["models", "train-shapes"], "--unet-steps"),
        (["eval", "shapes"], "--quick"),
    ],
)
def test_shapes_commands_print_the_tools_own_options(
    command: list[str], option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The training command sets up JSON logging on the root logger; here that would replace pytest's handlers.
    monkeypatch.setattr("services.cli.common.configure_logging", lambda: None)
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert option in result.stdout and f"{' '.join(command)} [-h]" in result.stdout


def test_shapes_eval_and_its_alias_forward_every_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr("tessera_shapes.report.main", lambda argv, *, prog: calls.append(list(argv)))
    runner = CliRunner()
    for command in (["shapes", "eval"], ["eval", "shapes"]):
        result = runner.invoke(app, [*command, "--quick", "--seed", "3"])
        assert result.exit_code == 0, result.output
    assert calls == [["--quick", "--seed", "3"]] * 2


def test_keys_create_list_revoke(redis_url: str, redis_client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_REDIS__URL", redis_url)
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--tenant", "acme"])
    assert created.exit_code == 0, created.output
    key_id, secret = created.stdout.split()[0], created.stdout.split()[-1]
    assert key_id.startswith("key_") and secret.startswith("tsk_")
    listed = runner.invoke(app, ["keys", "list", "--tenant", "acme"]).stdout
    assert key_id in listed and secret not in listed and "active" in listed
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).stdout


def test_json_logs_carry_request_and_job_ids() -> None:
    record = logging.LogRecord("tessera.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    token_r, token_j = logs.request_id.set("req-1"), logs.job_id.set("job_1")
    try:
        line = json.loads(logs.JsonFormatter().format(record))
    finally:
        logs.request_id.reset(token_r)
        logs.job_id.reset(token_j)
    assert line["message"] == "hello world" and line["request_id"] == "req-1" and line["job_id"] == "job_1"
    assert line["level"] == "info" and "time" in line
