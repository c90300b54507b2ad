"""The layering rules of DESIGN.md: the API loads no torch; core loads no fastapi or celery."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(statement: str, modules: list[str]) -> list[str]:
    probe = f"import sys; {statement}; print(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_api_imports_no_torch() -> None:
    assert _loaded_after("import services.api.app", ["torch", "diffusers", "transformers", "peft"]) == []


@pytest.mark.parametrize(
    "module",
    [
        "core.schemas",
        "core.jobs",
        "core.submissions",
        "core.stores.jobs",
        "core.stores.catalog",
        "core.stores.objects",
        "core.images",
        "core.ml.components",
        "core.ml.edlora.trainer",
        "core.ml.fusion.regional",
        "core.ml.metrics.evaluation",
        "core.ml.shapes.scorer",
    ],
)
def test_core_imports_no_web_or_queue_framework(module: str) -> None:
    assert _loaded_after(f"import {module}", ["fastapi", "starlette", "celery", "kombu"]) == []
