"""The generation task body: ready concepts and a prompt in; stage-1 images, masks and (styled) images out.

Stages, each timed into ``metrics.stages`` and reported as progress: ``loading``, ``sampling`` (fusion:
``conductor`` or ``regional``), ``styling`` (only with ``style``), ``uploading``. A cancel raises inside a stage's
step callback, so nothing is uploaded for a canceled job.
"""

from __future__ import annotations

from typing import Any

import PIL.Image

from core.images import load_image
from core.ml.fusion.conductor import LayoutReference, generate_conductor
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, generate_regional
from core.ml.prompts import bind_prompt
from core.ml.styling.pipeline import style_images
from core.progress import generation_plan
from core.schemas import GenerationRequest
from services.worker.outputs import store_png
from services.worker.run import JobRun


def _mask(run: JobRun, key: str) -> PIL.Image.Image:
    return load_image(run.ctx.objects.get_bytes(key), background=(0, 0, 0)).convert("L")


def _placements(run: JobRun) -> list[ConceptPlacement]:
    placements = []
    for item in run.record.plan["concepts"]:
        region: Any = None
        if item["region"] and "box" in item["region"]:
            region = tuple(item["region"]["box"])
        elif item["region"] and "mask_key" in item["region"]:
            region = _mask(run, item["region"]["mask_key"])
        weights = run.ctx.adapters.get(item["adapter_key"], item["adapter_sha256"])
        placements.append(ConceptPlacement(weights=weights, region=region, weight=item["weight"]))
    return placements


def _layout(run: JobRun) -> LayoutReference | None:
    plan = run.record.plan.get("layout")
    if not plan:
        return None
    image = load_image(run.ctx.objects.get_bytes(plan["image_key"]))
    masks = None if plan["mask_keys"] is None else [_mask(run, key) for key in plan["mask_keys"]]
    return LayoutReference(image=image, masks=masks)


def _fuse(run: JobRun, request: GenerationRequest, placements: list[ConceptPlacement]) -> GenerationResult:
    width, height, steps, guidance = request.sampling()
    arguments: dict[str, Any] = {
        "prompt": run.record.plan["prompt"],
        "negative_prompt": request.negative_prompt,
        "placements": placements,
        "width": width,
        "height": height,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "seed": request.seed or 0,
        "num_outputs": request.num_outputs,
        "on_step": run.reporter("sampling"),
    }
    components = run.ctx.models.components()
    if request.fusion == "regional":
        return generate_regional(components, **arguments)
    return generate_conductor(components, layout=_layout(run), inversions=run.ctx.models.inversions, **arguments)


def _style(run: JobRun, request: GenerationRequest, result: GenerationResult) -> list[PIL.Image.Image]:
    plan = run.record.plan["style"]
    class_words = {c["name"]: c["class_word"] for c in run.record.plan["concepts"]}
    # The styling stage runs on the base model, which knows the concepts only by their class words.
    parts = bind_prompt(run.record.plan["prompt"], learned=(), class_words=class_words)
    negative = bind_prompt(request.negative_prompt, learned=(), class_words=class_words, field="negative_prompt")
    return style_images(
        run.ctx.models.components(),
        run.ctx.models.styling(),
        result.images,
        prompt="".join(p for p in parts if isinstance(p, str)),
        negative_prompt="".join(p for p in negative if isinstance(p, str)),
        style_image=load_image(run.ctx.objects.get_bytes(plan["image_key"])),
        mode=plan["mode"],
        scale=plan["scale"],
        control_type=plan["control"]["type"],
        control_scale=plan["control"]["scale"],
        num_inference_steps=request.sampling()[2],
        guidance_scale=request.sampling()[3],
        seeds=result.seeds,
        on_step=run.reporter("styling"),
    )


def run_generation(run: JobRun) -> dict[str, Any]:
    """Generate (and style) the images of ``run.record`` and store them as output files (docs/api.md)."""
    # The API fills sampling defaults at submission; a record written without them gets the same ones here.
    request = GenerationRequest.model_validate(run.record.input).with_defaults(
        run.ctx.settings.models.generation_defaults
    )
    run.plan(generation_plan(styling=bool(run.record.plan.get("style"))))
    with run.stage("loading"):
        run.ctx.models.components()
        placements = _placements(run)
    run.check_cancel()
    with run.stage("sampling"):
        result = _fuse(run, request, placements)
    run.check_cancel()
    styled = None
    if run.record.plan.get("style"):
        with run.stage("styling"):
            styled = _style(run, request, result)
        run.check_cancel()
    with run.stage("uploading"):
        stage1 = [
            store_png(run, img, seed, name=f"stage1_images/{i}")
            for i, (img, seed) in enumerate(zip(result.images, result.seeds, strict=True))
        ]
        images = stage1
        if styled is not None:
            images = [
                store_png(run, img, seed, name=f"images/{i}")
                for i, (img, seed) in enumerate(zip(styled, result.seeds, strict=True))
            ]
        # Conductor masks are per image (image-major, each with its image's seed); regional ones are shared.
        per_image = len(result.masks) // max(1, len(result.images)) if request.fusion == "conductor" else 0
        masks = [
            store_png(run, mask, result.seeds[i // per_image] if per_image else None, name=f"masks/{i}")
            for i, mask in enumerate(result.masks)
        ]
    return {"images": images, "stage1_images": stage1, "masks": masks}
