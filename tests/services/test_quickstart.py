"""docs/quickstart.md's Python quick start, run as written against a real embedded service (tiny preset): it trains
two concepts, generates a scene with both and downloads it through the signed URL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from services.demo import sample_images
from services.embedded import Stack

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def test_python_quickstart_runs_as_written(tmp_path: Path) -> None:
    code = re.search(r"```python\n(.*?)```", QUICKSTART.read_text(), flags=re.S)
    assert code is not None, "docs/quickstart.md has no python block"
    work = tmp_path / "work"
    work.mkdir()
    # The photos the quick start names.
    for name in ("corgi", "tabby"):
        for i, data in enumerate(sample_images("star", 64, 3), start=1):
            (work / f"{name}-{i}.png").write_bytes(data)

    with Stack(data_dir=tmp_path / "stack", preset="tiny", extra_env={"OMP_NUM_THREADS": "1"}) as stack:
        script = code.group(1)
        # Only the two placeholders a reader fills in change.
        for placeholder, value in (
            ('BASE = "http://127.0.0.1:8000"', f'BASE = "{stack.url}"'),
            ('KEY = "…"', f'KEY = "{stack.api_key}"'),
        ):
            assert placeholder in script
            script = script.replace(placeholder, value)
        (work / "quickstart.py").write_text(script)
        run = subprocess.run([sys.executable, "quickstart.py"], cwd=work, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "succeeded" in run.stdout
    with Image.open(work / "scene-0.png") as scene:
        assert scene.size == (64, 64)  # the tiny preset's native size
