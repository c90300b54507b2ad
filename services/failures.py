"""The failures a ``tessera`` command expects, each as one line for the user and its own exit code.

A user who points the CLI at a stopped Redis, a closed port or with a revoked key needs to read what is wrong and
where, not a traceback; scripts need to tell the cases apart by exit code. Anything not listed here is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import httpx
import redis.exceptions

from core.errors import DependencyUnavailableError, ModelLoadError, ServiceError

EXIT_REDIS = 3
EXIT_API = 4
EXIT_AUTH = 5
EXIT_MODELS = 6
EXIT_REFUSED = 7
EXIT_INVALID = 8

EXIT_CODES_HELP = (
    "Exit codes: 0 done; 1 the work ran and failed (a job failed, the demo's verdict); 2 bad usage; "
    f"{EXIT_REDIS} Redis unreachable; {EXIT_API} the API unreachable; {EXIT_AUTH} the API refused the key; "
    f"{EXIT_MODELS} model weights missing or unloadable; {EXIT_REFUSED} the API refused a request; "
    f"{EXIT_INVALID} invalid input or a dependency unavailable. --debug shows the traceback of any of these."
)


@dataclass(frozen=True)
class Failure:
    """An expected failure: the process exit code and the one line to print."""

    code: int
    message: str


def explain(exc: BaseException) -> Failure | None:
    """The ``Failure`` for an exception a command can expect, or None for anything else (a bug)."""
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return Failure(EXIT_REDIS, f"cannot reach Redis ({exc}); is it running, and is TESSERA_REDIS__URL right?")
    if isinstance(exc, httpx.TransportError):
        where = _request_url(exc)
        return Failure(EXIT_API, f"cannot reach the API{where}: {exc or type(exc).__name__}; is the service running?")
    # The API's images do not install the client package; an error of it can only come from a process that has
    # imported it, so it is looked up, not imported.
    client_errors = sys.modules.get("tessera_client.errors")
    if client_errors is not None and isinstance(exc, client_errors.AuthenticationError):
        return Failure(EXIT_AUTH, f"the API refused the key ({exc}); check --api-key or TESSERA_API_KEY")
    if client_errors is not None and isinstance(exc, client_errors.TesseraError):
        return Failure(EXIT_REFUSED, f"the API refused a request: {exc}")
    if isinstance(exc, ModelLoadError):
        return Failure(EXIT_MODELS, str(exc))
    if isinstance(exc, ServiceError | DependencyUnavailableError):
        return Failure(EXIT_INVALID, str(exc))
    return None


def _request_url(exc: httpx.TransportError) -> str:
    try:
        return f" at {exc.request.url}"
    except RuntimeError:  # raised outside a request (no .request set)
        return ""
