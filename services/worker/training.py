"""The training task body: images in, concept masks, an ED-LoRA adapter, diagnostics and a ready concept out.

Stages: downloading → loading → masking (only for images without an uploaded mask: the preset's segmenter, prompted
by ``mask_prompts``) → compositing (only with ``composites``) → training → diagnosing (attention-in-mask on the
training images) → uploading (adapter and the masks the training used, as output files).

With ``composites`` (Seg-Mix, ``core.ml.edlora.composites``) the neighbours are other concepts of the tenant: their
training images (the first ``MAX_NEIGHBOUR_IMAGES``), cut out by the masks their training used (recomputed with the
segmenter where those are gone), each named in captions by its concept's class word ("a cat"). Neighbours drawn by
the base model from a class word are not offered: a generated image needs a segmenter that finds the named object,
which the presets do not have (the automatic choice picks the largest central object; the tiny SAM is random), and
it would cost a sampling run per neighbour on the training GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import PIL.Image

from core.errors import InvalidRequestError
from core.images import load_image
from core.job_record import JobRecord
from core.ml.edlora.adapter import ADAPTER_FORMAT, TrainingReport, adapter_to_bytes
from core.ml.edlora.composites import Cutout, TrainingExample, compose_examples, composite_count
from core.ml.edlora.diagnostics import measure_attention_in_mask
from core.ml.edlora.trainer import train_edlora
from core.ml.masks.segmenter import ConceptMasks, compute_masks
from core.plans import NeighbourPlan, TrainingPlan
from core.progress import Progress, training_plan
from core.schemas import MaskPrompt
from services.worker.context import WorkerContext
from services.worker.outputs import store_png
from services.worker.run import JobRun

DIAGNOSTIC_MAX_IMAGES = 8
"""The diagnostic runs on at most this many training images (3 UNet passes each)."""


def _masks(
    run: JobRun,
    images: list[PIL.Image.Image],
    prompts: Sequence[MaskPrompt | None] | None,
    user: Sequence[PIL.Image.Image | None],
) -> list[ConceptMasks]:
    """Masks for every image; the segmenter is loaded and run only for images without a given mask."""
    if all(m is not None for m in user):
        return compute_masks(None, images, user_masks=user)
    prompts = prompts or [None] * len(images)
    report = run.reporter("masking")
    result = []
    with run.stage("masking"):
        segmenter = run.ctx.models.segmenter()
        for i, image in enumerate(images):
            result += compute_masks(segmenter, [image], prompts=[prompts[i]], user_masks=[user[i]])
            report(Progress("masking", i + 1, len(images)))
    return result


def _load_mask(run: JobRun, key: str) -> PIL.Image.Image:
    return load_image(run.ctx.objects.get_bytes(key), background=(0, 0, 0)).convert("L")


@dataclass
class Neighbour:
    """Another concept's training images and masks, to cut neighbours from."""

    name: str
    phrase: str
    images: list[PIL.Image.Image]
    masks: list[ConceptMasks]


def class_phrase(class_word: str) -> str:
    """How captions name a neighbour concept: its class word with an article ("a cat", "an owl")."""
    return f"{'an' if class_word[:1] in 'aeiou' else 'a'} {class_word}"


@dataclass
class _Download:
    """A neighbour's plan entry, its images and the masks still stored (None where gone)."""

    spec: NeighbourPlan
    images: list[PIL.Image.Image]
    masks: list[PIL.Image.Image | None]


def _download_neighbours(run: JobRun, plan: TrainingPlan) -> list[_Download]:
    """Every neighbour's images and stored masks (call inside the downloading stage)."""
    downloads = []
    for spec in plan.neighbours or []:
        images = [load_image(run.ctx.objects.get_bytes(key)) for key in spec.image_keys]
        masks = [None if key is None else _load_mask(run, key) for key in spec.mask_keys]
        downloads.append(_Download(spec, images, masks))
    return downloads


def _neighbours(run: JobRun, downloads: Sequence[_Download]) -> list[Neighbour]:
    """Neighbours with a mask per image: the stored one, else the segmenter's (prompted as that training was)."""
    result = []
    for download in downloads:
        spec = download.spec
        masks = _masks(run, download.images, spec.mask_prompts, download.masks)
        result.append(Neighbour(spec.name, class_phrase(spec.class_word), download.images, masks))
    return result


def neighbour_cutouts(neighbours: Sequence[Neighbour]) -> list[Cutout]:
    """Every neighbour image whose mask marks an object; a segmenter's whole-image fallback cuts nothing out.

    Raises:
        InvalidRequestError: no neighbour image has a usable mask (field ``composites.neighbours``).
    """
    cutouts = [
        Cutout(image, mask.concept_image(), neighbour.phrase)
        for neighbour in neighbours
        for image, mask in zip(neighbour.images, neighbour.masks, strict=True)
        if mask.source != "whole_image" and mask.concept.any() and not mask.concept.all()
    ]
    if not cutouts:
        names = ", ".join(f"<{n.name}>" for n in neighbours)
        raise InvalidRequestError(
            f"composites.neighbours: no training image of {names} has a mask that marks an object (the segmenter "
            "found none); upload masks for that concept's images, or pick other neighbours",
            field="composites.neighbours",
        )
    return cutouts


def makes_composites(plan: TrainingPlan) -> bool:
    """Whether the plan's composites share leaves any composite (share · count rounds to at least 1)."""
    spec = plan.composites
    return spec is not None and composite_count(spec.example_count(len(plan.image_keys)), spec.share) > 0


def training_examples(
    plan: TrainingPlan,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[ConceptMasks],
    captions: Sequence[str | None] | None,
    neighbours: Sequence[Neighbour],
    resolution: int,
) -> list[TrainingExample]:
    """The training set: the images with their masks and captions, plus composites when the plan asks.

    Without ``composites`` (or with no composite in the share) this is the images as they are.
    """
    own = [
        TrainingExample(image, mask.concept_image(), mask.others_image(), captions[i] if captions else None)
        for i, (image, mask) in enumerate(zip(images, masks, strict=True))
    ]
    spec = plan.composites
    if spec is None or not makes_composites(plan):
        return own
    if not any(m.concept.any() and not m.concept.all() for m in masks):
        raise InvalidRequestError(
            "composites: no training image has a mask that marks part of it (mask sources: "
            f"{[m.source for m in masks]}), so the concept cannot be cut out; upload masks or give mask_prompts",
            field="composites",
        )
    return compose_examples(
        own,
        neighbour_cutouts(neighbours),
        count=spec.example_count(len(images)),
        seed=plan.options.seed,
        resolution=resolution,
        share=spec.share,
        background=spec.background,
    )


def _training_diagnostics(
    plan: TrainingPlan,
    examples: Sequence[TrainingExample],
    neighbours: Sequence[Neighbour],
    report: TrainingReport,
) -> dict[str, object]:
    """What the training saw: composites used, and whether the separation loss's other-object term had work."""
    composites = sum(e.composite for e in examples)
    diagnostics: dict[str, object] = {
        "composites": None
        if plan.composites is None
        else {
            "count": composites,
            "examples": len(examples),
            "share": round(composites / len(examples), 4),
            "neighbours": [n.name for n in neighbours],
        },
        "examples_with_other_objects": report.examples_with_other_objects,
        "separation_other_term": report.separation_other_term,
        "attention_on_other_objects_during_training": report.attention_on_other_objects,
        "loss_curve": [{"step": step, "loss": loss} for step, loss in report.loss_curve],
        "warnings": [],
    }
    if diagnostics["separation_other_term"] == "no_other_objects":
        diagnostics["warnings"] = [
            "separation_loss_weight > 0, but no training example had other objects with masks, so the separation "
            "loss's term that keeps the concept off other objects was 0 throughout; give composites to train it"
        ]
    return diagnostics


def run_training(run: JobRun) -> dict[str, object]:
    """Train the concept of ``run.record`` and publish its adapter and the masks it was trained with."""
    ctx, record, plan = run.ctx, run.record, run.record.plan
    if not isinstance(plan, TrainingPlan):
        raise TypeError(f"job {record.id} has no training plan")
    composing = makes_composites(plan)
    # Segment Anything runs unless every image came with a mask (_masks).
    run.plan(training_plan(masking=not plan.mask_keys, compositing=composing))
    with run.stage("downloading"):
        images = [load_image(ctx.objects.get_bytes(key)) for key in plan.image_keys]
        user: list[PIL.Image.Image | None] = [None] * len(images)
        if plan.mask_keys:
            user = [_load_mask(run, key) for key in plan.mask_keys]
        downloads = _download_neighbours(run, plan) if composing else []
    run.check_cancel()
    with run.stage("loading"):
        components = ctx.models.components()
    masks = _masks(run, images, plan.mask_prompts, user)
    neighbours = _neighbours(run, downloads)
    run.check_cancel()
    concept_masks = [m.concept_image() for m in masks]
    captions = None
    if plan.captions is not None:
        captions = [c if c is not None else f"a <{plan.concept.name}>" for c in plan.captions]
    resolution = plan.options.resolution or components.default_resolution
    with run.stage("compositing") if composing else contextlib.nullcontext():
        examples = training_examples(plan, images, masks, captions, neighbours, resolution)
    run.check_cancel()
    with run.stage("training"):
        weights = train_edlora(
            components,
            [e.image for e in examples],
            concept_name=plan.concept.name,
            class_word=plan.concept.class_word,
            config=plan.options,
            masks=[e.mask for e in examples],
            other_masks=[e.others for e in examples],
            captions=[e.caption for e in examples],
            on_step=run.reporter("training"),
        )
    run.check_cancel()
    with run.stage("diagnosing"):
        report = measure_attention_in_mask(
            components,
            weights,
            images[:DIAGNOSTIC_MAX_IMAGES],
            concept_masks[:DIAGNOSTIC_MAX_IMAGES],
            seed=plan.options.seed,
            caption=captions[0] if captions else None,
        )
    if weights.report is None:
        raise RuntimeError("train_edlora returned weights without a training report")
    trained = weights.report
    diagnostics: dict[str, object] = {
        **report.as_dict(),
        "mask_sources": [m.source for m in masks],
        "attention_in_mask_during_training": trained.attention_in_mask,
        **_training_diagnostics(plan, examples, neighbours, trained),
    }
    if plan.composites is not None:
        # The adapter's metadata records how it was trained; the trainer saw only images, not where they came from.
        weights.training_options["composites"] = diagnostics["composites"]
    with run.stage("uploading"):
        data = adapter_to_bytes(weights)
        concept = ctx.catalog.get_concept(record.tenant, plan.concept_id)
        ctx.objects.put_bytes(concept.adapter_key, data, "application/octet-stream")
        stored_masks = [store_png(run, mask, None, name=f"masks/{i}") for i, mask in enumerate(concept_masks)]
        concept.status = "ready"
        concept.adapter_bytes = len(data)
        concept.adapter_sha256 = hashlib.sha256(data).hexdigest()
        concept.adapter_format = ADAPTER_FORMAT
        ctx.catalog.save_concept(concept)
    return {"concept_id": concept.id, "masks": stored_masks, "diagnostics": diagnostics}


def abort_training(ctx: WorkerContext, record: JobRecord) -> None:
    """A failed or canceled training leaves its concept ``failed`` and no adapter behind."""
    if not isinstance(record.plan, TrainingPlan):
        return
    concept = ctx.catalog.fail_concept(record.tenant, record.plan.concept_id)
    ctx.objects.delete(concept.adapter_key)
