"""The training task body: images in, an ED-LoRA adapter and a ready concept out."""

from __future__ import annotations

import hashlib

from core.images import load_image
from core.jobs import JobRecord
from core.ml.edlora.adapter import ADAPTER_FORMAT, adapter_to_bytes
from core.ml.edlora.trainer import train_edlora
from core.schemas import TrainingRequest
from services.worker.context import WorkerContext
from services.worker.run import JobRun


def run_training(run: JobRun) -> dict[str, object]:
    """Train the concept of ``run.record`` and publish its adapter."""
    ctx, record = run.ctx, run.record
    request = TrainingRequest.model_validate(record.input)
    plan = record.plan
    with run.stage("downloading"):
        images = [load_image(ctx.objects.get_bytes(key)) for key in plan["image_keys"]]
        masks = None
        if plan.get("mask_keys"):
            masks = [
                load_image(ctx.objects.get_bytes(key), background=(0, 0, 0)).convert("L") for key in plan["mask_keys"]
            ]
    run.check_cancel()
    with run.stage("loading"):
        components = ctx.models.components()
    with run.stage("training"):
        captions = None
        if request.captions is not None:
            captions = [c if c is not None else f"a <{request.concept.name}>" for c in request.captions]
        weights = train_edlora(
            components,
            images,
            concept_name=request.concept.name,
            class_word=request.concept.class_word,
            config=request.options,
            masks=masks,
            captions=captions,
            on_step=run.reporter("training"),
        )
    run.check_cancel()
    with run.stage("uploading"):
        data = adapter_to_bytes(weights)
        concept = ctx.catalog.get_concept(record.tenant, plan["concept_id"])
        ctx.objects.put_bytes(concept.adapter_key, data, "application/octet-stream")
        concept.status = "ready"
        concept.adapter_bytes = len(data)
        concept.adapter_sha256 = hashlib.sha256(data).hexdigest()
        concept.adapter_format = ADAPTER_FORMAT
        ctx.catalog.save_concept(concept)
    return {"concept_id": concept.id, "masks": [], "diagnostics": {}}


def abort_training(ctx: WorkerContext, record: JobRecord) -> None:
    """A failed or canceled training leaves its concept ``failed`` and no adapter behind."""
    concept = ctx.catalog.get_concept(record.tenant, record.plan["concept_id"])
    concept.status = "failed"
    ctx.catalog.save_concept(concept)
    ctx.objects.delete(concept.adapter_key)
