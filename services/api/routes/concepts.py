"""/v1/concepts: what trainings produced."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from core.resources import Concept, ConceptList
from services.api.deps import Presenting, State, Tenant
from services.api.errors import AUTHENTICATED, responses

router = APIRouter(prefix="/v1/concepts", tags=["concepts"])


@router.get(
    "",
    response_model=ConceptList,
    operation_id="list_concepts",
    responses=responses(*AUTHENTICATED, 422, codes=("validation_error",)),
)
def list_concepts(
    state: State,
    tenant: Tenant,
    presenter: Presenting,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> ConceptList:
    """The tenant's concepts, newest first."""
    records, next_cursor = state.catalog.list_concepts(tenant, limit=limit, cursor=cursor)
    return ConceptList(data=[presenter.concept(r) for r in records], next_cursor=next_cursor)


@router.get(
    "/{ref}",
    response_model=Concept,
    operation_id="get_concept",
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def get_concept(ref: str, state: State, tenant: Tenant, presenter: Presenting) -> Concept:
    """A concept by id or by name."""
    return presenter.concept(state.catalog.get_concept(tenant, ref))


@router.delete(
    "/{ref}",
    status_code=204,
    operation_id="delete_concept",
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def delete_concept(ref: str, state: State, tenant: Tenant) -> Response:
    """Delete a concept and its adapter; its name becomes free again."""
    record = state.catalog.get_concept(tenant, ref)
    state.catalog.delete_concept(record)
    state.objects.delete(record.adapter_key)
    return Response(status_code=204)
