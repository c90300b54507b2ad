"""The training task body: images in, concept masks, an ED-LoRA adapter, diagnostics and a ready concept out.

Stages: downloading → loading → masking (only for images without an uploaded mask: the preset's segmenter, prompted
by ``mask_prompts``) → training → diagnosing (attention-in-mask on the training images) → uploading (adapter and
the masks the training used, as output files).
"""

from __future__ import annotations

import hashlib
from typing import Any

import PIL.Image

from core.images import load_image
from core.jobs import JobRecord
from core.ml.edlora.adapter import ADAPTER_FORMAT, adapter_to_bytes
from core.ml.edlora.diagnostics import measure_attention_in_mask
from core.ml.edlora.trainer import train_edlora
from core.ml.masks.segmenter import ConceptMasks, compute_masks
from core.progress import Progress
from core.schemas import TrainingRequest
from services.worker.context import WorkerContext
from services.worker.outputs import store_png
from services.worker.run import JobRun

DIAGNOSTIC_MAX_IMAGES = 8
"""The diagnostic runs on at most this many training images (3 UNet passes each)."""


def _masks(
    run: JobRun, request: TrainingRequest, images: list[PIL.Image.Image], user: list[Any]
) -> list[ConceptMasks]:
    """Masks for every image; the segmenter is loaded and run only for images without an uploaded mask."""
    if all(m is not None for m in user):
        return compute_masks(None, images, user_masks=user)
    prompts = request.mask_prompts or [None] * len(images)
    report = run.reporter("masking")
    result = []
    with run.stage("masking"):
        segmenter = run.ctx.models.segmenter()
        for i, image in enumerate(images):
            result += compute_masks(segmenter, [image], prompts=[prompts[i]], user_masks=[user[i]])
            report(Progress("masking", i + 1, len(images)))
    return result


def run_training(run: JobRun) -> dict[str, object]:
    """Train the concept of ``run.record`` and publish its adapter and the masks it was trained with."""
    ctx, record = run.ctx, run.record
    request = TrainingRequest.model_validate(record.input)
    plan = record.plan
    with run.stage("downloading"):
        images = [load_image(ctx.objects.get_bytes(key)) for key in plan["image_keys"]]
        user: list[Any] = [None] * len(images)
        if plan.get("mask_keys"):
            user = [
                load_image(ctx.objects.get_bytes(key), background=(0, 0, 0)).convert("L") for key in plan["mask_keys"]
            ]
    run.check_cancel()
    with run.stage("loading"):
        components = ctx.models.components()
    masks = _masks(run, request, images, user)
    run.check_cancel()
    concept_masks = [m.concept_image() for m in masks]
    captions = None
    if request.captions is not None:
        captions = [c if c is not None else f"a <{request.concept.name}>" for c in request.captions]
    with run.stage("training"):
        weights = train_edlora(
            components,
            images,
            concept_name=request.concept.name,
            class_word=request.concept.class_word,
            config=request.options,
            masks=concept_masks,
            other_masks=[m.others_image() for m in masks],
            captions=captions,
            on_step=run.reporter("training"),
        )
    run.check_cancel()
    with run.stage("diagnosing"):
        report = measure_attention_in_mask(
            components,
            weights,
            images[:DIAGNOSTIC_MAX_IMAGES],
            concept_masks[:DIAGNOSTIC_MAX_IMAGES],
            seed=request.options.seed,
            caption=captions[0] if captions else None,
        )
    diagnostics: dict[str, object] = {
        **report.as_dict(),
        "mask_sources": [m.source for m in masks],
        "attention_in_mask_during_training": weights.training_options.get("attention_in_mask_during_training", {}),
    }
    with run.stage("uploading"):
        data = adapter_to_bytes(weights)
        concept = ctx.catalog.get_concept(record.tenant, plan["concept_id"])
        ctx.objects.put_bytes(concept.adapter_key, data, "application/octet-stream")
        stored_masks = [store_png(run, mask, None) for mask in concept_masks]
        concept.status = "ready"
        concept.adapter_bytes = len(data)
        concept.adapter_sha256 = hashlib.sha256(data).hexdigest()
        concept.adapter_format = ADAPTER_FORMAT
        ctx.catalog.save_concept(concept)
    return {"concept_id": concept.id, "masks": stored_masks, "diagnostics": diagnostics}


def abort_training(ctx: WorkerContext, record: JobRecord) -> None:
    """A failed or canceled training leaves its concept ``failed`` and no adapter behind."""
    concept = ctx.catalog.get_concept(record.tenant, record.plan["concept_id"])
    concept.status = "failed"
    ctx.catalog.save_concept(concept)
    ctx.objects.delete(concept.adapter_key)
