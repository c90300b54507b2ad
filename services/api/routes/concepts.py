"""/v1/concepts: what trainings produced."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from core.schemas import Concept, ConceptList
from services.api.deps import State, Tenant

router = APIRouter(prefix="/v1/concepts", tags=["concepts"])


@router.get("", response_model=ConceptList)
def list_concepts(
    state: State, tenant: Tenant, limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: str | None = None
) -> ConceptList:
    """The tenant's concepts, newest first."""
    records, next_cursor = state.catalog.list_concepts(tenant, limit=limit, cursor=cursor)
    return ConceptList(data=[state.presenter.concept(r) for r in records], next_cursor=next_cursor)


@router.get("/{ref}", response_model=Concept)
def get_concept(ref: str, state: State, tenant: Tenant) -> Concept:
    """A concept by id or by name."""
    return state.presenter.concept(state.catalog.get_concept(tenant, ref))


@router.delete("/{ref}", status_code=204)
def delete_concept(ref: str, state: State, tenant: Tenant) -> Response:
    """Delete a concept and its adapter; its name becomes free again."""
    record = state.catalog.get_concept(tenant, ref)
    state.catalog.delete_concept(record)
    state.objects.delete(record.adapter_key)
    return Response(status_code=204)
