"""The layering rules of DESIGN.md: the API loads no torch; core loads no fastapi or celery; neither core nor the
service's processes depend on the shapes-world tooling (``tessera_shapes``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
        "core.ml.masks.segmenter",
    ],
)
def test_core_imports_no_web_or_queue_framework(module: str) -> None:
    assert _loaded_after(f"import {module}", ["fastapi", "starlette", "celery", "kombu"]) == []


def test_shapes_scorer_needs_neither_torch_nor_a_web_or_queue_framework() -> None:
    # The world and its scorer judge images with numpy and Pillow alone, so the demo can score beside the service.
    heavy = ["torch", "diffusers", "transformers", "fastapi", "starlette", "celery", "kombu"]
    assert _loaded_after("import tessera_shapes.scorer", heavy) == []


def _shapes_imports(path: Path) -> list[tuple[int, bool]]:
    """``(line, inside a function)`` of every import of ``tessera_shapes`` in ``path``."""
    found: list[tuple[int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(name == "tessera_shapes" or name.startswith("tessera_shapes.") for name in names):
            found.append((getattr(node, "lineno", 0), in_function))
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, nested)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)
    return found


@pytest.mark.parametrize("folder", ["core", "services/api", "services/worker"])
def test_core_and_the_service_processes_never_import_the_shapes_tooling(folder: str) -> None:
    # The toy world trains and measures a preset; the service only loads that preset from core/ml/presets.
    offenders = {
        str(path.relative_to(REPO)): lines
        for path in sorted((REPO / folder).rglob("*.py"))
        if (lines := _shapes_imports(path))
    }
    assert offenders == {}


def test_only_the_command_line_and_the_demo_load_the_shapes_tooling_and_lazily() -> None:
    importers = {
        path.relative_to(REPO).as_posix(): lines
        for path in sorted((REPO / "services").rglob("*.py"))
        if (lines := _shapes_imports(path))
    }
    assert set(importers) <= {"services/cli.py", "services/demo.py"}
    eager = {path: [line for line, lazy in lines if not lazy] for path, lines in importers.items()}
    assert all(not lines for lines in eager.values()), f"module-level imports of tessera_shapes: {eager}"
