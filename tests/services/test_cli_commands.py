"""CLI commands that run in-process: `tessera eval concept` and `tessera models init`."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from core.ml.metrics.tiny import build_tiny_eval_encoders
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
