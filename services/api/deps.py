"""Request dependencies: the app state, the authenticated tenant (and its rate limit)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.errors import AuthError
from core.presenter import Presenter
from core.stores.keys import key_hash
from core.stores.limits import RateLimitExceeded
from services.api.state import ApiState

_bearer = HTTPBearer(auto_error=False)


# Dependencies that never block are async: FastAPI runs a sync one in its thread pool, a hop per request that
# showed in the create path's latency under load.
async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.tessera
    return state


State = Annotated[ApiState, Depends(get_state)]


async def get_presenter(request: Request, state: State) -> Presenter:
    """Renders records with URLs for the address this request came in at (``ApiState.presenter_at``)."""
    return state.presenter_at(str(request.base_url))


Presenting = Annotated[Presenter, Depends(get_presenter)]


async def get_tenant(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant of the bearer key; ``401`` when the key is missing or unknown, ``429`` over its rate limit.

    Async, on the stores' asyncio clients: every authenticated request passes here, and a sync dependency would
    cost each one a thread-pool hop. The key's rate-limit state goes on ``request.state.rate_limit``;
    ``services.api.app.RateLimitHeaders`` writes it into the response's ``RateLimit-*`` headers, the 429 included."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("missing API key: send Authorization: Bearer <key>", code="missing_api_key")
    given = credentials.credentials
    tenant = None
    # Static keys: compare against every one in constant time so timing does not reveal a prefix match.
    for key, owner in state.tenant_by_key.items():
        if hmac.compare_digest(given.encode(), key.encode()):
            tenant = owner
    if tenant is None:
        tenant = await state.keys.atenant_of(given)
    if tenant is None:
        raise AuthError("unknown API key", code="invalid_api_key")
    try:
        request.state.rate_limit = await state.rate_limiter.hit(key_hash(given))
    except RateLimitExceeded as exc:
        request.state.rate_limit = exc.state
        raise
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]
