"""/v1/webhooks: the tenant's signing secret."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from services.api.deps import State, Tenant

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    key: str


@router.get("/secret", response_model=WebhookSecret)
def get_secret(state: State, tenant: Tenant) -> WebhookSecret:
    """The secret (``whsec_…``) that signs this tenant's webhooks (Standard Webhooks)."""
    return WebhookSecret(key=state.webhooks.secret(tenant))


@router.post("/secret/rotate", response_model=WebhookSecret)
def rotate_secret(state: State, tenant: Tenant) -> WebhookSecret:
    """Replace the signing secret; deliveries from now on are signed with the new one."""
    return WebhookSecret(key=state.webhooks.rotate_secret(tenant))
