"""An object store that rides out a short outage: each call is retried with backoff, then fails with a code.

Workers wrap their store in it (``services.worker.context``): a job that meets an object store restarting or a
network blip waits and carries on instead of failing. The API does not: a request should answer at once (503).
A missing object (``ObjectNotFoundError``) is an answer, not an outage, and is never retried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from core.errors import ObjectNotFoundError, ObjectStoreError
from core.stores.objects import ObjectStore, SignedURL

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

STORAGE_UNAVAILABLE = "storage_unavailable"


def _with_retries(what: str, call: Callable[[], _T], delays: Sequence[float], sleep: Callable[[float], None]) -> _T:
    for attempt, delay in enumerate([*delays, None]):
        try:
            return call()
        except ObjectNotFoundError:
            raise
        except ObjectStoreError as exc:
            if delay is None:
                raise ObjectStoreError(
                    f"the object store is unavailable ({what} failed {attempt + 1} times over "
                    f"{sum(delays):.0f} s): {exc.message}",
                    code=STORAGE_UNAVAILABLE,
                ) from exc
            logger.warning("object store %s failed (%s); retrying in %.1f s", what, exc.message, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def open_retrying(
    build: Callable[[], ObjectStore], delays: Sequence[float], *, sleep: Callable[[float], None] = time.sleep
) -> RetryingObjectStore:
    """Build a worker's store, riding out an outage while building it too, and wrap it in ``RetryingObjectStore``.

    Why: building an S3 store with ``create_bucket`` checks the bucket, so a worker process that started while the
    store was unreachable used to exit at startup (and ``tessera serve`` does not restart it).

    Raises:
        ObjectStoreError: ``storage_unavailable`` when building still fails after every delay.
    """
    return RetryingObjectStore(_with_retries("open", build, delays, sleep), delays, sleep=sleep)


class RetryingObjectStore:
    """``ObjectStore`` that retries every failed call after each of ``delays`` seconds.

    Args:
        store: the backend.
        delays: seconds to wait before each retry (``[1, 2, 4, 8]``: four retries over 15 s); empty = no retries.
        sleep: how to wait (tests pass a recorder).

    Raises (every method): ``ObjectStoreError`` with code ``storage_unavailable`` once the retries are spent, the
    last failure as its cause; ``ObjectNotFoundError`` at once.
    """

    def __init__(
        self, store: ObjectStore, delays: Sequence[float], *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._store = store
        self._delays = list(delays)
        self._sleep = sleep

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        return _with_retries(what, call, self._delays, self._sleep)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._call(f"put {key}", lambda: self._store.put_bytes(key, data, content_type))

    def get_bytes(self, key: str) -> bytes:
        return self._call(f"get {key}", lambda: self._store.get_bytes(key))

    def exists(self, key: str) -> bool:
        return self._call(f"exists {key}", lambda: self._store.exists(key))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self._store.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        return self._call(f"delete {prefix}*", lambda: self._store.delete_prefix(prefix))

    def signed_url(self, key: str, *, expires_in: int) -> SignedURL:
        return self._call(f"sign {key}", lambda: self._store.signed_url(key, expires_in=expires_in))

    def ping(self) -> None:
        self._store.ping()  # a health check reports the state now; it is not retried

    def get_to_path(self, key: str, dest: Path) -> Path:
        return self._call(f"get {key}", lambda: self._store.get_to_path(key, dest))
