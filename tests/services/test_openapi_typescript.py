"""The OpenAPI document is usable outside Python: openapi-typescript generates TypeScript types from it, and tsc
type-checks a small create-generation call written against them (and refuses one that breaks the schema)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from core.config import Settings
from services.api.app import create_app

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".npm-tools" / "node_modules" / ".bin"

USE = """\
import type { components, paths } from "./api";

type CreateGeneration = paths["/v1/generations"]["post"];
type GenerationBody = NonNullable<CreateGeneration["requestBody"]>["content"]["application/json"];
type Accepted = CreateGeneration["responses"][202]["content"]["application/json"];
type Problem = CreateGeneration["responses"][422]["content"]["application/problem+json"];
type Job = components["schemas"]["Job"];

export async function createGeneration(base: string, key: string, body: GenerationBody): Promise<Accepted> {
  const response = await fetch(`${base}/v1/generations`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json", "Idempotency-Key": "order-17" },
    body: JSON.stringify(body),
  });
  if (response.status !== 200 && response.status !== 202) {
    const problem = (await response.json()) as Problem;
    throw new Error(`${problem.code}: ${problem.detail}`);
  }
  return (await response.json()) as Accepted;
}

export function imageIds(job: Job): string[] {
  // The output union is told apart by kind.
  if (job.output?.kind === "generation") {
    return job.output.images.map((image) => image.file_id);
  }
  if (job.output?.kind === "training") {
    return [job.output.concept_id];
  }
  return [];
}

export const body: GenerationBody = {
  prompt: "a photo of <corgi> and <tabby> on the beach",
  concepts: [{ concept: "corgi", region: { box: [0.0, 0.2, 0.5, 1.0] }, weight: 0.7 }, { concept: "tabby" }],
  fusion: "conductor",
  seed: 42,
};
"""

# The same call with a number where the schema says string: tsc must refuse it.
BROKEN = USE.replace('prompt: "a photo of <corgi> and <tabby> on the beach"', "prompt: 42")


def _tools() -> tuple[Path, Path]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed: the TypeScript client check needs them (make npm-tools)")
    generate, tsc = TOOLS / "openapi-typescript", TOOLS / "tsc"
    if not (generate.exists() and tsc.exists()):
        # make test runs npm-tools first; a bare pytest run installs the same pinned tools here.
        subprocess.run(["make", "-s", "npm-tools"], cwd=ROOT, check=True, timeout=600)
    return generate, tsc


def _tsc(tsc: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(tsc),
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--lib",
            "es2022,dom",
            "--moduleResolution",
            "bundler",
            "use.ts",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generated_typescript_client_compiles(tmp_path: Path) -> None:
    generate, tsc = _tools()
    settings = Settings(redis={"url": "redis://127.0.0.1:1/0"}, storage={"backend": "local", "root": tmp_path / "o"})
    (tmp_path / "openapi.json").write_text(json.dumps(create_app(settings).openapi()))
    generated = subprocess.run(
        # Fields with a default are optional in a request: without this flag openapi-typescript makes them required.
        [str(generate), "openapi.json", "--output", "api.d.ts", "--default-non-nullable=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr
    types = (tmp_path / "api.d.ts").read_text()
    assert "create_generation_job" in types and "GenerationOutput" in types

    (tmp_path / "use.ts").write_text(USE)
    checked = _tsc(tsc, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    (tmp_path / "use.ts").write_text(BROKEN)
    refused = _tsc(tsc, tmp_path)
    line = BROKEN.splitlines().index("  prompt: 42,") + 1
    assert refused.returncode != 0 and f"use.ts({line}," in refused.stdout, refused.stdout
