"""The generation task body: ready concepts and a prompt in; stage-1 images, masks and (styled) images out.

Stages, each timed into ``metrics.stages`` and reported as progress: ``loading``, ``sampling`` (fusion:
``conductor`` or ``regional``), ``styling`` (only with ``style``), ``uploading``. A cancel raises inside a stage's
step callback, so nothing is uploaded for a canceled job. Everything the task runs is in the job's
``GenerationPlan`` (``core.plans``), made at submission.
"""

from __future__ import annotations

from typing import Any

import PIL.Image

from core.images import load_image
from core.ml.fusion.conductor import LayoutReference, generate_conductor
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, SamplingRequest, generate_regional
from core.ml.regions import Region
from core.ml.styling.pipeline import style_images
from core.plans import BoxRegion, ConceptPlan, GenerationPlan, LayoutPlan, StylePlan
from core.progress import generation_plan
from services.worker.outputs import store_png
from services.worker.run import JobRun


def _mask(run: JobRun, key: str) -> PIL.Image.Image:
    return load_image(run.ctx.objects.get_bytes(key), background=(0, 0, 0)).convert("L")


def _region(run: JobRun, concept: ConceptPlan) -> Region:
    if isinstance(concept.region, BoxRegion):
        return concept.region.box
    if concept.region is not None:
        return _mask(run, concept.region.mask_key)
    return None


def _placements(run: JobRun, plan: GenerationPlan) -> list[ConceptPlacement]:
    return [
        ConceptPlacement(
            weights=run.ctx.adapters.get(concept.adapter_key, concept.adapter_sha256),
            region=_region(run, concept),
            weight=concept.weight,
        )
        for concept in plan.concepts
    ]


def _layout(run: JobRun, plan: LayoutPlan | None) -> LayoutReference | None:
    if plan is None:
        return None
    image = load_image(run.ctx.objects.get_bytes(plan.image_key))
    masks = None if plan.mask_keys is None else [_mask(run, key) for key in plan.mask_keys]
    return LayoutReference(image=image, masks=masks)


def _fuse(run: JobRun, plan: GenerationPlan, request: SamplingRequest) -> GenerationResult:
    components = run.ctx.models.components()
    if plan.fusion == "regional":
        return generate_regional(components, request)
    return generate_conductor(
        components, request, layout=_layout(run, plan.layout), inversions=run.ctx.models.inversions
    )


def _style(run: JobRun, plan: StylePlan, request: SamplingRequest, result: GenerationResult) -> list[PIL.Image.Image]:
    # The styling stage runs on the base model, which knows the concepts only by their class words.
    return style_images(
        run.ctx.models.components(),
        run.ctx.models.styling(),
        result.images,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        style_image=load_image(run.ctx.objects.get_bytes(plan.image_key)),
        mode=plan.mode,
        scale=plan.scale,
        control_type=plan.control.type,
        control_scale=plan.control.scale,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        seeds=result.seeds,
        on_step=run.reporter("styling"),
    )


def run_generation(run: JobRun) -> dict[str, Any]:
    """Generate (and style) the images of ``run.record`` and store them as output files (docs/api.md)."""
    plan = run.record.plan
    if not isinstance(plan, GenerationPlan):
        raise TypeError(f"job {run.record.id} has no generation plan")
    run.plan(generation_plan(styling=plan.style is not None))
    with run.stage("loading"):
        run.ctx.models.components()
        placements = _placements(run, plan)
    run.check_cancel()
    with run.stage("sampling"):
        request = SamplingRequest.create(
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            placements=placements,
            on_step=run.reporter("sampling"),
            **plan.sampling.model_dump(),
        )
        result = _fuse(run, plan, request)
    run.check_cancel()
    styled = None
    if plan.style is not None:
        with run.stage("styling"):
            styled = _style(run, plan.style, request, result)
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
        per_image = len(result.masks) // max(1, len(result.images)) if plan.fusion == "conductor" else 0
        masks = [
            store_png(run, mask, result.seeds[i // per_image] if per_image else None, name=f"masks/{i}")
            for i, mask in enumerate(result.masks)
        ]
    return {"images": images, "stage1_images": stage1, "masks": masks}
