"""The generation task body: ready concepts and a prompt in, PNG images out."""

from __future__ import annotations

from typing import Any

from core.images import load_image
from core.ml.fusion.regional import ConceptPlacement, generate_regional
from core.schemas import GenerationRequest
from services.worker.outputs import store_png
from services.worker.run import JobRun


def run_generation(run: JobRun) -> dict[str, Any]:
    """Generate the images of ``run.record`` and store them as output files."""
    ctx, record = run.ctx, run.record
    request = GenerationRequest.model_validate(record.input)
    with run.stage("loading"):
        components = ctx.models.components()
        placements = []
        for item in record.plan["concepts"]:
            region: Any = None
            if item["region"] and "box" in item["region"]:
                region = tuple(item["region"]["box"])
            elif item["region"] and "mask_key" in item["region"]:
                region = load_image(ctx.objects.get_bytes(item["region"]["mask_key"]), background=(0, 0, 0)).convert(
                    "L"
                )
            weights = ctx.adapters.get(item["adapter_key"], item["adapter_sha256"])
            placements.append(ConceptPlacement(weights=weights, region=region, weight=item["weight"]))
    run.check_cancel()
    with run.stage("sampling"):
        result = generate_regional(
            components,
            prompt=record.plan["prompt"],
            negative_prompt=request.negative_prompt,
            placements=placements,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            seed=request.seed or 0,
            num_outputs=request.num_outputs,
            on_step=run.reporter("sampling"),
        )
    run.check_cancel()
    with run.stage("uploading"):
        images = [store_png(run, img, seed) for img, seed in zip(result.images, result.seeds, strict=True)]
        masks = [store_png(run, mask, None) for mask in result.masks]
    # Without a styling stage, the stage-1 images are the final ones.
    return {"images": images, "stage1_images": images, "masks": masks}
