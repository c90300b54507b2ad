"""When a request is tried again, and how long the client waits first.

A request is retried only when doing it twice cannot do the work twice:

* a connect error (or a connect timeout) on any request: nothing reached the server;
* another transport error, a 5xx or a 429 only on an idempotent request (GET, HEAD, OPTIONS, PUT, DELETE) or one
  that carries an ``Idempotency-Key`` (the server answers a repeat with the first job). The client sends a key on
  every create call, so those are retried; an upload has none and is retried on connect errors only;
* a 409 ``idempotency_request_in_flight``: the first of two requests with the same key is still being processed.

The wait is exponential with jitter (``initial`` × 2ⁿ plus up to ``jitter`` seconds, at most ``max_backoff``), or
what the server's ``Retry-After`` says, when it says. A ``Retry-After`` longer than ``max_retry_after`` is not
waited for: the error is raised with its ``retry_after`` for the caller to decide.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tenacity import RetryCallState, wait_exponential, wait_random

from tessera_client.errors import retry_after_seconds

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried.

    Args:
        attempts: tries in all (1 = never retry).
        initial: the first backoff, seconds.
        max_backoff: the longest backoff, seconds.
        jitter: up to this many seconds added at random to each backoff, so clients that failed together do not
            come back together.
        max_retry_after: the longest ``Retry-After`` the client waits for by itself.
    """

    attempts: int = 4
    initial: float = 0.25
    max_backoff: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 30.0


NO_RETRY = RetryPolicy(attempts=1)
"""Try every request once."""


class RetryableResponse(Exception):
    """An answer that may succeed when asked again (5xx, 429); carries the response for the final error."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} from {response.request.method} {response.request.url}")
        self.response = response
        self.retry_after = retry_after_seconds(response)


def is_idempotent(request: httpx.Request) -> bool:
    """True when sending ``request`` twice has the effect of sending it once."""
    return request.method in IDEMPOTENT_METHODS or "idempotency-key" in request.headers


def check_response(response: httpx.Response) -> httpx.Response:
    """Raise ``RetryableResponse`` for an answer worth asking again for (the body has been read)."""
    if response.status_code in RETRY_STATUSES:
        raise RetryableResponse(response)
    if response.status_code == 409 and "idempotency-key" in response.request.headers:
        if b"idempotency_request_in_flight" in response.content:
            raise RetryableResponse(response)
    return response


def should_retry(exc: BaseException, *, idempotent: bool, policy: RetryPolicy) -> bool:
    """Whether the failure ``exc`` of a request is worth another try under ``policy``."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True  # the request never reached the server
    if not idempotent:
        return False
    if isinstance(exc, RetryableResponse):
        return exc.retry_after is None or exc.retry_after <= policy.max_retry_after
    return isinstance(exc, httpx.TransportError)


def backoff(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    """The tenacity wait of ``policy``: the server's ``Retry-After`` when given, else exponential with jitter."""
    exponential = wait_exponential(multiplier=policy.initial, max=policy.max_backoff) + wait_random(0, policy.jitter)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableResponse) and exc.retry_after is not None:
            return exc.retry_after
        return float(exponential(state))

    return wait


def reconnect_delay(policy: RetryPolicy, failures: int) -> float:
    """Seconds to wait before reconnecting an event stream that failed ``failures`` times in a row."""
    exponential: float = policy.initial * 2.0 ** max(0, failures - 1)
    return min(policy.max_backoff, exponential) + random.uniform(0, policy.jitter)
