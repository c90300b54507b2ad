"""The demo client: two concepts learned from sample images, then one image with both, all over HTTP."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import typer
from PIL import Image, ImageDraw

from services.client import TesseraClient, TesseraError

# Per preset: image size and the sampling settings that suit it.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"size": 64, "train_steps": 20, "steps": 10, "guidance": 5.0},
    "shapes": {"size": 64, "train_steps": 300, "steps": 20, "guidance": 4.0},
    "sd15": {"size": 512, "train_steps": 500, "steps": 30, "guidance": 7.5},
}


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(points, fill=fill)


def sample_images(kind: str, size: int, count: int) -> list[bytes]:
    """Procedural sample photos of a subject ("star" or "ring"), a little different each time."""
    images = []
    for i in range(count):
        img = Image.new("RGB", (size, size), (235, 235, 228))
        draw = ImageDraw.Draw(img)
        cx = size / 2 + (i - count / 2) * size * 0.03
        cy = size / 2 + ((i * 7) % 3 - 1) * size * 0.03
        r = size * (0.3 + 0.02 * (i % 3))
        if kind == "star":
            _star(draw, cx, cy, r, (140, 50, 190))
        else:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(245, 140, 20), width=max(2, int(size * 0.09)))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def _follow(client: TesseraClient, job: dict[str, Any], label: str) -> dict[str, Any]:
    return client.wait(job["id"], timeout=3600, progress=label)


def _timeline(jobs: list[tuple[str, dict[str, Any]]]) -> None:
    typer.echo("\njob timeline")
    for label, job in jobs:
        m = job["metrics"]
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in m.get("stages", {}).items())
        typer.echo(
            f"  {label:<22} {job['status']:<10} queued {m['queue_seconds'] or 0:.1f}s "
            f"ran {m['run_seconds'] or 0:.1f}s  [{stages}]"
        )


def run_demo(url: str, api_key: str, *, out: Path, preset: str = "tiny") -> int:
    """Run the demo against ``url``; returns a process exit code."""
    defaults = PRESET_DEFAULTS.get(preset, PRESET_DEFAULTS["sd15"])
    size = defaults["size"]
    suffix = str(int(time.time()))
    started = time.monotonic()
    finished: list[tuple[str, dict[str, Any]]] = []
    with TesseraClient(url, api_key) as client:
        try:
            concepts = []
            for kind, class_word in (("star", "star"), ("ring", "ring")):
                name = f"{kind}-{suffix}"
                files = [client.upload_file(d)["id"] for d in sample_images(kind, size, 4)]
                typer.echo(f"uploaded {len(files)} images of <{name}>")
                job = client.create_training(
                    {
                        "concept": {"name": name, "class_word": class_word},
                        "images": files,
                        "options": {"max_train_steps": defaults["train_steps"], "seed": 0},
                    }
                )
                concepts.append((name, job))
            for name, job in concepts:
                final = _follow(client, job, f"train <{name}>")
                finished.append((f"train <{name}>", final))
                if final["status"] != "succeeded":
                    typer.echo(f"training of <{name}> ended {final['status']}: {final['error']}", err=True)
                    return 1
            (a, _), (b, _) = concepts
            job = client.create_generation(
                {
                    "prompt": f"a <{a}> on the left and a <{b}> on the right",
                    "concepts": [
                        {"concept": a, "region": {"box": [0.0, 0.0, 0.5, 1.0]}},
                        {"concept": b, "region": {"box": [0.5, 0.0, 1.0, 1.0]}},
                    ],
                    "fusion": "regional",
                    "width": size,
                    "height": size,
                    "num_inference_steps": defaults["steps"],
                    "guidance_scale": defaults["guidance"],
                    "seed": 7,
                }
            )
            final = _follow(client, job, "generate")
            finished.append(("generate", final))
            if final["status"] != "succeeded":
                typer.echo(f"generation ended {final['status']}: {final['error']}", err=True)
                return 1
            out.mkdir(parents=True, exist_ok=True)
            saved = []
            for i, image in enumerate(final["output"]["images"]):
                path = out / f"{final['id']}-{i}.png"
                path.write_bytes(client.download(image["url"]))
                saved.append(path)
        except TesseraError as exc:
            typer.echo(f"the service refused a request: {exc}", err=True)
            return 1
    _timeline(finished)
    typer.echo(f"\nimages: {', '.join(str(p) for p in saved)}")
    typer.echo(f"output URLs (valid 1 h): {final['output']['images'][0]['url']}")
    typer.echo(f"demo took {time.monotonic() - started:.1f}s")
    return 0
