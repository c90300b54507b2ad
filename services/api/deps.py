"""Request dependencies: the app state and the authenticated tenant."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.errors import AuthError
from services.api.state import ApiState

_bearer = HTTPBearer(auto_error=False)


def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.tessera
    return state


State = Annotated[ApiState, Depends(get_state)]


def get_tenant(state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant of the bearer key; ``401`` when the key is missing or unknown."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError("missing API key: send Authorization: Bearer <key>", code="missing_api_key")
    given = credentials.credentials.encode()
    tenant = None
    # Compare against every key in constant time so timing does not reveal a prefix match.
    for key, owner in state.tenant_by_key.items():
        if hmac.compare_digest(given, key.encode()):
            tenant = owner
    if tenant is None:
        raise AuthError("unknown API key", code="invalid_api_key")
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]
