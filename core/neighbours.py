"""A training's neighbours (Seg-Mix composites): which stored images of the tenant's other concepts supply the
objects pasted beside the concept, and the masks to cut them out by.

Part of accepting a training (``core.submissions``): the neighbours are resolved and checked when the request is
accepted, so the worker reads object keys from the plan and never looks another job up.
"""

from __future__ import annotations

from typing import cast

from core.errors import InvalidRequestError, NotFoundError, UnknownConceptError
from core.plans import NeighbourPlan
from core.schemas import CompositesSpec, TrainingRequest
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore

MAX_NEIGHBOUR_IMAGES = 8
"""Training images used per neighbour concept (its first ones): enough variety, and bounded download/masking."""


def _optional_key(catalog: Catalog, tenant: str, file_id: object) -> str | None:
    """The object key of a file that may be gone (retention) or absent (None)."""
    if not isinstance(file_id, str):
        return None
    try:
        return catalog.get_file(tenant, file_id).key
    except NotFoundError:
        return None


def neighbour_plans(
    tenant: str, request: TrainingRequest, composites: CompositesSpec, *, catalog: Catalog, jobs: JobStore
) -> list[NeighbourPlan]:
    """Where each neighbour concept's cut-outs come from: its training images and the masks that training used.

    Per image the mask is the uploaded one, else the one the training computed (its output), else None: the worker
    segments that image again with the neighbour's own mask prompt.
    """
    if request.options.concept_type == "style":
        raise InvalidRequestError(
            'composites: a concept of concept_type "style" is not an object that can be cut out and placed beside '
            "another; train it without composites",
            field="composites",
        )
    found = catalog.find_concepts(tenant, composites.neighbours)
    plan: list[NeighbourPlan] = []
    seen: dict[str, str] = {}
    for i, ref in enumerate(composites.neighbours):
        field = f"composites.neighbours[{i}]"
        concept = found[ref]
        if concept is None:
            raise UnknownConceptError(f"{field}: concept <{ref}> does not exist", field=field)
        if concept.name == request.concept.name:
            raise InvalidRequestError(
                f"{field}: <{ref}> is the concept this request trains; neighbours are other concepts", field=field
            )
        if concept.id in seen:
            raise InvalidRequestError(
                f"{field}: <{ref}> is the same concept as {seen[concept.id]}; name each neighbour once", field=field
            )
        seen[concept.id] = field
        expired = InvalidRequestError(
            f"{field}: the training images of <{concept.name}> are no longer stored (uploads and job records are "
            "kept for a limited time); leave it out, or train it again",
            field=field,
            code="neighbour_images_expired",
        )
        try:
            job = jobs.get_for_tenant(tenant, concept.training_job_id)
        except NotFoundError as exc:
            raise expired from exc
        image_ids = list(job.input.get("images") or [])[:MAX_NEIGHBOUR_IMAGES]
        image_keys = [_optional_key(catalog, tenant, fid) for fid in image_ids]
        if not image_keys or any(key is None for key in image_keys):
            raise expired
        uploaded = list(job.input.get("masks") or [None] * len(image_ids))
        computed = [m.get("file_id") for m in ((job.output or {}).get("masks") or [])]
        computed += [None] * (len(image_ids) - len(computed))
        mask_keys = [
            _optional_key(catalog, tenant, uploaded[j]) or _optional_key(catalog, tenant, computed[j])
            for j in range(len(image_ids))
        ]
        prompts = list(job.input.get("mask_prompts") or [None] * len(image_ids))[: len(image_ids)]
        plan.append(
            NeighbourPlan(
                concept_id=concept.id,
                name=concept.name,
                class_word=concept.class_word,
                image_keys=cast(list[str], image_keys),
                mask_keys=mask_keys,
                mask_prompts=prompts,
            )
        )
    return plan
