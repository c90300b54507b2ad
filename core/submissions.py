"""Accepting work: check a create request against the tenant's files and concepts, record the job, enqueue it.

The checks happen here, before anything is queued, so a bad request stores nothing and fails fast
with the field it is about. The transport that carries the job id to a worker is injected (``enqueue``). A transport
that can hand over its message (``ScriptEnqueue``: a broker on the job store's Redis) has it pushed by the job
store's create script, in the same round trip as the record; any other is called once the record is stored.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from core.config import NO_TRAINING_DEFAULTS, PRESET_GENERATION_DEFAULTS, GenerationDefaults, TrainingDefaults
from core.errors import (
    DependencyUnavailableError,
    InvalidRequestError,
    ServiceError,
    UnknownConceptError,
)
from core.job_record import JobRecord, new_id
from core.neighbours import neighbour_plans
from core.plans import (
    BoxRegion,
    ConceptPlan,
    GenerationPlan,
    LayoutPlan,
    MaskRegion,
    SamplingPlan,
    StylePlan,
    TrainingPlan,
)
from core.resources import JobError
from core.rules import CONCEPT_REF_RE
from core.schemas import ControlSpec, GenerationRequest, TrainingRequest
from core.stores.catalog import Catalog, ConceptRecord, FileRecord
from core.stores.job_store import JobStore
from core.tasks import QUEUE_FOR_KIND, QueueMessage
from core.webhook_security import Resolver, system_resolver, vet_url

Enqueue = Callable[[JobRecord], None]
# The tenant's files a request names, fetched in one round trip (``Catalog.get_files``); None for a missing one.
Files = Mapping[str, FileRecord | None]


@runtime_checkable
class ScriptEnqueue(Protocol):
    """An ``Enqueue`` whose message the job store can push itself, atomically with the record.

    Calling it still sends a message on its own (re-sends and requeues of an existing job use that path).
    """

    def __call__(self, record: JobRecord) -> None: ...

    def message(self, record: JobRecord) -> QueueMessage:
        """The queue message of ``record``, for ``JobStore.create(message=...)``."""
        ...


@dataclass(frozen=True)
class Policy:
    """What the operator allows: the active-job quota, which webhook targets are acceptable, and whether the
    model preset can style (``preset`` names it in the refusal)."""

    max_active_jobs: int | None = None
    allow_private_webhooks: bool = False
    allow_http_webhooks: bool = False
    resolver: Resolver = system_resolver
    styling: bool = True
    preset: str = ""
    defaults: GenerationDefaults = PRESET_GENERATION_DEFAULTS["sd15"]
    training_defaults: TrainingDefaults = NO_TRAINING_DEFAULTS

    def check_styling(self, request: GenerationRequest) -> None:
        if request.style is not None and not self.styling:
            raise InvalidRequestError(
                f"style: the model preset {self.preset!r} has no styling weights (IP-Adapter, ControlNet); "
                "send the request without style, or run a preset that has them (sd15, tiny)",
                field="style",
            )

    def check_webhook(self, url: str | None) -> None:
        if url is not None:
            vet_url(
                url,
                allow_private=self.allow_private_webhooks,
                allow_http=self.allow_http_webhooks,
                resolver=self.resolver,
            )


def _file_key(files: Files, file_id: str, field: str) -> str:
    """The stored key of ``file_id`` from a fetched table; ``unknown_file`` on ``field`` when it is not there."""
    record = files.get(file_id)
    if record is None:
        raise InvalidRequestError(f"{field}: no file {file_id!r}", field=field, code="unknown_file")
    return record.key


def _mask_key(files: Files, image_id: str, mask_id: str, index: int) -> str:
    """The stored key of ``masks[index]`` (its image ``image_id`` already checked), refused when its shape is not
    its image's: the worker scales a mask to its image (a half-size mask is fine), so a different aspect ratio would
    stretch it off the concept."""
    field = f"masks[{index}]"
    key = _file_key(files, mask_id, field)
    # The images were checked before their masks: both records are in the table.
    mask, image = cast(FileRecord, files[mask_id]), cast(FileRecord, files[image_id])
    # Equal ratios up to one pixel of rounding at the mask's size.
    if abs(mask.width * image.height - mask.height * image.width) > max(image.width, image.height):
        raise InvalidRequestError(
            f"{field}: the mask is {mask.width}x{mask.height} but images[{index}] is {image.width}x{image.height}; "
            "a mask must have its image's size (or the same aspect ratio)",
            field=field,
            code="invalid_mask",
        )
    return key


def _message_for(enqueue: Enqueue, record: JobRecord) -> QueueMessage | None:
    """The message the create script should push with ``record``; None for a transport that sends it itself."""
    return enqueue.message(record) if isinstance(enqueue, ScriptEnqueue) else None


def _enqueue_or_fail(jobs: JobStore, record: JobRecord, enqueue: Enqueue) -> None:
    try:
        enqueue(record)
    except Exception as exc:
        error = JobError(code="queue_unavailable", message="the job could not be queued")
        jobs.transition(record.id, "queued", "failed", update=lambda r: setattr(r, "error", error))
        raise DependencyUnavailableError(
            "the job queue is unavailable; the job was not started (retry shortly)", code="queue_unavailable"
        ) from exc


def _job_record(
    job_id: str, tenant: str, accepted: TrainingRequest | GenerationRequest, plan: TrainingPlan | GenerationPlan
) -> JobRecord:
    """A new job of ``plan``'s kind: the request as accepted (its public ``input``) and the plan the worker runs."""
    return JobRecord(
        id=job_id,
        tenant=tenant,
        kind=plan.kind,
        queue=QUEUE_FOR_KIND[plan.kind],
        input=accepted.model_dump(mode="json"),
        metadata=accepted.metadata,
        plan=plan,
    )


@dataclass(frozen=True)
class Submission:
    """A stored and queued job, and its 1-based place in its queue when it was stored."""

    record: JobRecord
    queue_position: int


def submit_training(
    tenant: str,
    request: TrainingRequest,
    *,
    catalog: Catalog,
    jobs: JobStore,
    enqueue: Enqueue,
    policy: Policy = Policy(),
) -> Submission:
    """Validate a training request, reserve the concept name, store and enqueue the job (its input with the
    preset's training defaults applied, so the worker trains what the job record says)."""
    policy.check_webhook(request.webhook)
    request = request.with_defaults(policy.training_defaults)
    files = catalog.get_files(tenant, [*request.images, *(request.masks or [])])
    image_keys = [_file_key(files, fid, f"images[{i}]") for i, fid in enumerate(request.images)]
    mask_keys = None
    if request.masks is not None:
        mask_keys = [_mask_key(files, request.images[i], fid, i) for i, fid in enumerate(request.masks)]
        # An uploaded mask bypasses Segment Anything, so a prompt beside it would be silently ignored.
        for i, prompt in enumerate(request.mask_prompts or []):
            if prompt is not None:
                raise InvalidRequestError(
                    f"mask_prompts[{i}]: images[{i}] has an uploaded mask (masks[{i}]), which is used as given; "
                    "send a prompt or a mask per image, not both",
                    field=f"mask_prompts[{i}]",
                )
    neighbours = None
    if request.composites is not None:
        neighbours = neighbour_plans(tenant, request, request.composites, catalog=catalog, jobs=jobs)
    job_id = new_id("job")
    concept = ConceptRecord(
        id=new_id("cpt"),
        tenant=tenant,
        name=request.concept.name,
        class_word=request.concept.class_word,
        training_job_id=job_id,
        metadata=request.metadata,
    )
    record = _job_record(
        job_id,
        tenant,
        request,
        TrainingPlan(
            concept_id=concept.id,
            concept=request.concept,
            image_keys=image_keys,
            mask_keys=mask_keys,
            mask_prompts=request.mask_prompts,
            captions=request.captions,
            options=request.options,
            composites=request.composites,
            neighbours=neighbours,
        ),
    )
    message = _message_for(enqueue, record)
    catalog.reserve_concept(concept)
    try:
        position = jobs.create(record, max_active=policy.max_active_jobs, message=message)
    except ServiceError:
        catalog.delete_concept(concept)  # over quota: free the name again
        raise
    if message is None:
        try:
            _enqueue_or_fail(jobs, record, enqueue)
        except ServiceError:
            catalog.fail_concept(concept.tenant, concept.id)
            raise
    return Submission(record, position)


def _ready_concepts(found: Mapping[str, ConceptRecord | None], refs: dict[str, str]) -> dict[str, ConceptRecord]:
    """The ready concept of each ref (mapped to the request field that names it) from the ones ``found``."""
    for ref, field in refs.items():
        concept = found[ref]
        if concept is None or concept.status != "ready":
            state = "does not exist" if concept is None else f"is {concept.status}, not ready"
            raise UnknownConceptError(f"{field}: concept <{ref}> {state}", field=field)
    return cast(dict[str, ConceptRecord], found)


def _stage_plan(files: Files, request: GenerationRequest, concepts: int) -> tuple[LayoutPlan | None, StylePlan | None]:
    """The layout reference and styling inputs of a generation as object keys, checked against the tenant's files."""
    layout, style = None, None
    if request.layout is not None:
        if request.fusion != "conductor":
            raise InvalidRequestError(
                'layout: a layout reference is followed by fusion "conductor" only', field="layout"
            )
        masks = request.layout.masks
        if masks is not None and len(masks) != concepts:
            raise InvalidRequestError(
                f"layout.masks: one mask per concept in the prompt ({concepts}), got {len(masks)}",
                field="layout.masks",
            )
        layout = LayoutPlan(
            image_key=_file_key(files, request.layout.image, "layout.image"),
            mask_keys=None
            if masks is None
            else [_file_key(files, fid, f"layout.masks[{i}]") for i, fid in enumerate(masks)],
        )
    if request.control is not None and request.style is None:
        raise InvalidRequestError("control: ControlNet belongs to the styling stage; give style too", field="control")
    if request.style is not None:
        style = StylePlan(
            image_key=_file_key(files, request.style.image, "style.image"),
            scale=request.style.scale,
            mode=request.style.mode,
            control=request.control or ControlSpec(),
        )
    return layout, style


def _generation_files(request: GenerationRequest) -> list[str]:
    """Every file id a generation request names: region masks, the layout image and its masks, the style image."""
    ids = [use.region.mask for use in request.concepts or [] if use.region is not None and use.region.mask]
    if request.layout is not None:
        ids += [request.layout.image, *(request.layout.masks or [])]
    if request.style is not None:
        ids.append(request.style.image)
    return ids


def _concept_fields(request: GenerationRequest) -> dict[str, str]:
    """Every concept the request names, mapped to the field that names it first (the prompt's refs first)."""
    fields: dict[str, str] = {}
    for ref in request.concept_refs():
        fields.setdefault(ref, "prompt")
    for i, use in enumerate(request.concepts or []):
        fields.setdefault(use.concept, f"concepts[{i}].concept")
    return fields


async def submit_generation(
    tenant: str,
    request: GenerationRequest,
    *,
    catalog: Catalog,
    jobs: JobStore,
    enqueue: Enqueue,
    policy: Policy = Policy(),
) -> Submission:
    """Validate a generation request against the tenant's ready concepts and files, store and enqueue the job.

    Runs on the event loop: the reads and the create are the stores' asyncio twins (two round trips, three when
    the request names files), and the blocking parts (resolving a webhook host, a transport that sends its own
    message) go to a worker thread. ``catalog`` and ``jobs`` need their ``async_client``.
    """
    if request.webhook is not None:
        await asyncio.to_thread(policy.check_webhook, request.webhook)  # resolves the host: blocking DNS
    policy.check_styling(request)
    fields = _concept_fields(request)
    found = _ready_concepts(await catalog.afind_concepts(tenant, list(fields)), fields)
    file_ids = _generation_files(request)
    files = await catalog.aget_files(tenant, file_ids) if file_ids else {}
    record = generation_record(tenant, request, found, files, policy)
    message = _message_for(enqueue, record)
    position = await jobs.acreate(record, max_active=policy.max_active_jobs, message=message)
    if message is None:
        await asyncio.to_thread(_enqueue_or_fail, jobs, record, enqueue)
    return Submission(record, position)


def generation_record(
    tenant: str,
    request: GenerationRequest,
    found: Mapping[str, ConceptRecord],
    files: Files,
    policy: Policy,
) -> JobRecord:
    """The new job of a generation request, planned from the ready concepts it names (``found``, by ref) and the
    files it names (``files``, by id): defaults applied, the seed drawn, regions and stages resolved to object keys.
    No I/O; raises the request's first problem (``InvalidRequestError``) naming its field."""
    by_ref = {ref: found[ref] for ref in request.concept_refs()}
    # Defaults once: the job records them, and the plan reads each concept's weight from the same copy.
    seed = request.seed if request.seed is not None else secrets.randbelow(2**32)
    accepted = request.with_defaults(policy.defaults).model_copy(update={"seed": seed})
    uses: dict[str, tuple[BoxRegion | MaskRegion | None, float]] = {}
    for i, use in enumerate(accepted.concepts or []):
        concept = found[use.concept]
        if concept.id not in {c.id for c in by_ref.values()}:
            raise InvalidRequestError(
                f"concepts[{i}].concept: <{use.concept}> is not named in the prompt", field=f"concepts[{i}].concept"
            )
        region: BoxRegion | MaskRegion | None = None
        if use.region is not None and use.region.box is not None:
            region = BoxRegion(box=use.region.box)
        elif use.region is not None and use.region.mask is not None:
            region = MaskRegion(mask_key=_file_key(files, use.region.mask, f"concepts[{i}].region.mask"))
        # with_defaults gave every use its weight.
        uses[concept.id] = (region, use.weight if use.weight is not None else policy.defaults.lora_weight)
    # Concepts in prompt order, each once; those the request does not place get the automatic layout.
    plan_concepts: list[ConceptPlan] = []
    for concept in {c.id: c for c in by_ref.values()}.values():
        region, weight = uses.get(concept.id, (None, policy.defaults.lora_weight))
        plan_concepts.append(
            ConceptPlan(
                concept_id=concept.id,
                name=concept.name,
                class_word=concept.class_word,
                adapter_key=concept.adapter_key,
                adapter_sha256=concept.adapter_sha256,
                region=region,
                weight=weight,
            )
        )
    layout, style = _stage_plan(files, request, len(plan_concepts))
    # The ML pipeline names concepts <name>; ids in the prompt are rewritten to names.
    prompt = CONCEPT_REF_RE.sub(lambda m: f"<{by_ref[m.group(1)].name}>", request.prompt)
    plan = GenerationPlan(
        fusion=accepted.fusion,
        prompt=prompt,
        negative_prompt=accepted.negative_prompt,
        concepts=plan_concepts,
        # with_defaults filled every sampling value the request left out, and the seed is drawn above.
        sampling=SamplingPlan.model_validate(accepted.model_dump(include=set(SamplingPlan.model_fields))),
        layout=layout,
        style=style,
    )
    return _job_record(new_id("job"), tenant, accepted, plan)
