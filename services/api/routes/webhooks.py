"""/v1/webhooks: the tenant's signing secret."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.api.deps import State, Tenant
from services.api.errors import AUTHENTICATED, responses

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    key: str = Field(description="whsec_<base64>: the Standard Webhooks signing key.")


@router.get(
    "/secret", response_model=WebhookSecret, operation_id="get_webhook_secret", responses=responses(*AUTHENTICATED)
)
def get_secret(state: State, tenant: Tenant) -> WebhookSecret:
    """The secret (``whsec_…``) that signs this tenant's webhooks (Standard Webhooks)."""
    return WebhookSecret(key=state.webhooks.secret(tenant))


@router.post(
    "/secret/rotate",
    response_model=WebhookSecret,
    operation_id="rotate_webhook_secret",
    responses=responses(*AUTHENTICATED),
)
def rotate_secret(state: State, tenant: Tenant) -> WebhookSecret:
    """Replace the signing secret; deliveries from now on are signed with the new one."""
    return WebhookSecret(key=state.webhooks.rotate_secret(tenant))
