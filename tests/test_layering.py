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


def _loaded_packages_after(statement: str, package: str) -> list[str]:
    """Every module of ``package`` (the package itself included) that ``statement`` loads in a fresh process."""
    probe = (
        f"import sys; {statement}; "
        f"print(','.join(sorted(m for m in sys.modules if m == {package!r} or m.startswith({package + '.'!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_api_imports_no_torch() -> None:
    assert _loaded_after("import services.api.app", ["torch", "diffusers", "transformers", "peft"]) == []


@pytest.mark.parametrize("module", ["services.api.app", "core.schemas", "core.resources", "core.submissions"])
def test_the_api_side_loads_no_ml_module(module: str) -> None:
    # The limits, the concept rules and the training options the API validates with live outside core.ml
    # (core.rules, core.training_options), so nothing on the request path can pull the ML code in by accident.
    assert _loaded_packages_after(f"import {module}", "core.ml") == []


@pytest.mark.parametrize("module", ["core.rules", "core.training_options"])
def test_the_shared_rules_load_nothing_of_the_ml_side(module: str) -> None:
    heavy = ["torch", "diffusers", "transformers", "peft", "numpy", "PIL"]
    assert _loaded_after(f"import {module}", heavy) == []
    assert _loaded_packages_after(f"import {module}", "core.ml") == []


def test_the_rules_module_imports_the_standard_library_alone() -> None:
    # core.rules is read by every side; a project import there would make it a place where layers meet.
    tree = ast.parse((REPO / "core" / "rules.py").read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


@pytest.mark.parametrize(
    "module",
    [
        "core.rules",
        "core.training_options",
        "core.schemas",
        "core.resources",
        "core.job_record",
        "core.submissions",
        "core.stores.job_store",
        "core.stores.catalog",
        "core.stores.objects",
        "core.stores.object_factory",
        "core.cancellation",
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
    assert set(importers) <= {"services/cli/shapes.py", "services/demo.py"}
    eager = {path: [line for line, lazy in lines if not lazy] for path, lines in importers.items()}
    assert all(not lines for lines in eager.values()), f"module-level imports of tessera_shapes: {eager}"


def _core_import_graph() -> dict[str, set[str]]:
    """Module → the core modules it imports anywhere in its file (function bodies and TYPE_CHECKING blocks too)."""
    files = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in sorted((REPO / "core").rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from core.stores import job_keys`` imports the module core.stores.job_keys.
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        graph[name] = {module for module in found if module in files and module != name}
    return graph


def test_no_two_core_modules_import_each_other() -> None:
    # A circle (the object store seam and its backends once were one) means neither side can be read, loaded or
    # tested alone; a lazy import inside a function only hides it.
    graph = _core_import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module == goal:
                return True
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return False

    circles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if reaches(b, a)})
    assert circles == []


def test_core_outside_the_ml_package_never_imports_it() -> None:
    # core.ml depends on core, one way: the rules both sides share live in core (core.rules, core.training_options).
    graph = _core_import_graph()
    upward = {
        module: sorted(dep for dep in deps if dep == "core.ml" or dep.startswith("core.ml."))
        for module, deps in graph.items()
        if module != "core.ml" and not module.startswith("core.ml.")
    }
    assert {module: deps for module, deps in upward.items() if deps} == {}
