"""One way for the smoke tests to run a benchmark module as the suite does and read the rows it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_bench(
    module: str, *args: str, out: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """``python -m <module> <args> --rows <out>`` from the repository root (offline, 5 min at most); asserts it
    succeeded and returns the finished process (for its printed detail) and the rows as written (JSON)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--rows", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(out.read_text())
