"""The demo client: two concepts learned from sample images, then one image with both, all over HTTP.

On the ``shapes`` preset (the default of ``make demo``) the samples are the shapes world's two evaluation
concepts (a purple triangle, a green ring: a colour and a shape the base model never saw) and the scorer
judges the generated scene: each concept in its half, with its own colour and shape, and no attribute leakage.

The generated images (and each training's masks) are saved under ``out/<job id>/``: the embedded service the demo
starts stops when the demo returns, and the signed URLs with it. URLs are printed only for a service that keeps
running (``--url``).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from PIL import Image, ImageDraw
from tessera_client import AuthenticationError, Job, OutputImage, TesseraClient, TesseraError

HALVES = ([0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0])


@dataclass
class ConceptSamples:
    name: str
    class_word: str
    images: list[bytes]
    captions: list[str] | None = None


@dataclass
class DemoPlan:
    """What the demo uploads, how it trains and samples, and how it judges the result (per preset)."""

    size: int
    concepts: list[ConceptSamples]
    options: dict[str, Any]
    steps: int
    guidance: float
    weight: float | None = None  # None: the preset's default adapter scale, applied by the API
    judge: Callable[[bytes], tuple[bool, list[str]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    draw.polygon(points, fill=fill)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
        images.append(_png(img))
    return images


def _generic_plan(size: int, train_steps: int, steps: int, guidance: float) -> DemoPlan:
    suffix = str(int(time.time()))
    return DemoPlan(
        size=size,
        concepts=[ConceptSamples(f"{kind}-{suffix}", kind, sample_images(kind, size, 4)) for kind in ("star", "ring")],
        options={"max_train_steps": train_steps, "seed": 0},
        steps=steps,
        guidance=guidance,
    )


def _shapes_plan() -> DemoPlan:
    # The shapes world needs torch only through the recipe module; the demo runs beside the service.
    from tessera_shapes import world
    from tessera_shapes.personalization import SHAPES_RECIPE, class_word, concept_examples
    from tessera_shapes.scorer import score_image

    recipe = SHAPES_RECIPE
    suffix = str(int(time.time()))
    picked = [world.concept(name) for name in world.EVALUATION_CONCEPTS]
    concepts = []
    for index, concept in enumerate(picked):
        images, captions = concept_examples(
            concept, count=recipe.num_images, seed=index, positions=recipe.example_positions
        )
        name = f"{concept.name.replace('_', '-')}-{suffix}"
        concepts.append(
            ConceptSamples(
                name,
                class_word(concept),
                [_png(image) for image in images],
                # The API's captions say <concept> where the concept's words go.
                [c.replace(f"<{concept.name}>", "<concept>") for c in captions],
            )
        )

    def judge(png: bytes) -> tuple[bool, list[str]]:
        import numpy as np

        expected = [picked[0].spec.at("left"), picked[1].spec.at("right")]
        score = score_image(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), expected)
        lines = []
        for spec, v in zip(expected, score.objects, strict=True):
            found = "nothing" if v.found is None else f"a {v.found.colour} {v.found.shape} on the {v.found.position}"
            lines.append(
                f"{'ok ' if v.correct else 'BAD'} asked a {spec.colour} {spec.shape} on the {spec.position}, "
                f"found {found}"
            )
        lines.append(f"leakage: {'yes' if score.leakage else 'none'}")
        if score.extra_objects:
            lines.append(f"extra objects: {score.extra_objects}")
        return score.correct, lines

    return DemoPlan(
        size=world.RESOLUTION,
        concepts=concepts,
        options=recipe.training.model_dump(mode="json"),
        steps=recipe.num_inference_steps,
        guidance=recipe.guidance_scale,
        judge=judge,
    )


def plan_for(preset: str) -> DemoPlan:
    if preset == "shapes":
        return _shapes_plan()
    if preset == "tiny":
        return _generic_plan(64, 20, 10, 5.0)
    return _generic_plan(512, 500, 30, 7.5)


def _timeline(jobs: list[tuple[str, Job]]) -> None:
    typer.echo("\njob timeline")
    for label, job in jobs:
        m = job.metrics
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in m.stages.items())
        typer.echo(
            f"  {label:<34} {job.status:<10} queued {m.queue_seconds or 0:.1f}s "
            f"ran {m.run_seconds or 0:.1f}s  [{stages}]"
        )


def save_outputs(client: TesseraClient, job: Job, folder: Path, images: list[OutputImage], stem: str) -> list[Path]:
    """Download ``images`` of ``job`` into ``folder/<job id>/<stem>-<i>.png`` while their signed URLs are valid."""
    target = folder / job.id
    target.mkdir(parents=True, exist_ok=True)
    saved = []
    for i, image in enumerate(images):
        if image.url is None:  # the file was deleted since the job ran
            continue
        path = target / f"{stem}-{i}.png"
        path.write_bytes(client.download(image.url))
        saved.append(path)
    return saved


DEFAULT_SEED = 7


def run_demo(
    url: str,
    api_key: str,
    *,
    out: Path,
    preset: str = "tiny",
    seed: int = DEFAULT_SEED,
    service_stays_up: bool = False,
) -> int:
    """Run the demo against ``url``; returns a process exit code.

    Args:
        out: the folder the outputs are saved in, one folder per job (``out/<job id>/``).
        seed: the generation's seed (training is seeded by the plan), so a scene can be drawn again or another
            drawn from the same concepts.
        service_stays_up: the service outlives the demo (``--url``), so its output URLs are worth printing.
    """
    plan = plan_for(preset)
    started = time.monotonic()
    finished: list[tuple[str, Job]] = []
    masks: list[Path] = []
    with TesseraClient(url, api_key) as client:
        try:
            jobs = []
            for concept in plan.concepts:
                files = [client.upload_file(d).id for d in concept.images]
                typer.echo(f"uploaded {len(files)} images of <{concept.name}>")
                body: dict[str, Any] = {
                    "concept": {"name": concept.name, "class_word": concept.class_word},
                    "images": files,
                    "options": plan.options,
                }
                if concept.captions:
                    body["captions"] = concept.captions
                jobs.append((concept.name, client.create_training(body)))
            for name, job in jobs:
                final = client.wait(job.id, timeout=3600, progress=f"train <{name}>")
                finished.append((f"train <{name}>", final))
                if final.status != "succeeded":
                    typer.echo(f"training of <{name}> ended {final.status}: {final.error}", err=True)
                    return 1
                masks += save_outputs(client, final, out, final.training_output.masks, "mask")
            (a, _), (b, _) = jobs
            scale = {} if plan.weight is None else {"weight": plan.weight}
            job = client.create_generation(
                {
                    "prompt": f"a <{a}> on the left and a <{b}> on the right",
                    "concepts": [
                        {"concept": a, "region": {"box": HALVES[0]}, **scale},
                        {"concept": b, "region": {"box": HALVES[1]}, **scale},
                    ],
                    "fusion": "conductor",
                    "width": plan.size,
                    "height": plan.size,
                    "num_inference_steps": plan.steps,
                    "guidance_scale": plan.guidance,
                    "seed": seed,
                }
            )
            final = client.wait(job.id, timeout=3600, progress="generate")
            finished.append(("generate", final))
            if final.status != "succeeded":
                typer.echo(f"generation ended {final.status}: {final.error}", err=True)
                return 1
            output = final.generation_output
            saved = save_outputs(client, final, out, output.images, "image")
        except AuthenticationError:
            raise  # a refused key is the caller's to fix: the CLI says so with its own exit code
        except TesseraError as exc:
            typer.echo(f"the service refused a request: {exc}", err=True)
            return 1
    _timeline(finished)
    typer.echo(f"\nimages: {', '.join(str(p) for p in saved)}")
    if masks:
        typer.echo(f"training masks: {', '.join(sorted({str(p.parent) for p in masks}))}")
    if service_stays_up:
        typer.echo(f"output URLs (valid until {output.images[0].expires_at}): {output.images[0].url}")
    if plan.judge is not None:
        good, lines = plan.judge(saved[0].read_bytes())
        typer.echo(f"\nscorer's verdict on the generated scene (seed {seed}):")
        typer.echo(
            f"  {'GOOD' if good else 'BAD'}: {'both concepts bound, nothing else drawn' if good else 'see below'}"
        )
        for line in lines:
            typer.echo(f"    {line}")
    typer.echo(f"demo took {time.monotonic() - started:.1f}s")
    return 0
