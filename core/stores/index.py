"""Time-ordered per-tenant indexes in Redis, with opaque cursors for newest-first pagination."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import cast

import redis

from core.errors import InvalidRequestError


def index_member(created_at: datetime, object_id: str) -> str:
    """The member of ``object_id`` in a time index, e.g. ``"00001795708798034672:job_…"``."""
    # Zero-padded microseconds sort lexicographically in time order; the id breaks ties.
    return f"{int(created_at.timestamp() * 1_000_000):020d}:{object_id}"


def encode_cursor(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        member = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cursor is not one this API issued: {cursor!r}", field="cursor") from exc
    if ":" not in member or not member.split(":", 1)[0].isdigit():
        raise InvalidRequestError(f"cursor is not one this API issued: {cursor!r}", field="cursor")
    return member


class TimeIndex:
    """A sorted set whose members are ``<created micros>:<id>``, all with score 0 (ordered by lex)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._r = client
        self.key = key

    def add(self, created_at: datetime, object_id: str, pipe: redis.client.Pipeline | None = None) -> None:
        (pipe or self._r).zadd(self.key, {index_member(created_at, object_id): 0})

    def remove(self, created_at: datetime, object_id: str, pipe: redis.client.Pipeline | None = None) -> None:
        (pipe or self._r).zrem(self.key, index_member(created_at, object_id))

    def _newest_first(self, cursor: str | None, batch: int) -> Iterator[tuple[str, str]]:
        upper = "(" + decode_cursor(cursor) if cursor else "+"
        while True:
            members = cast(list[bytes], self._r.zrevrangebylex(self.key, upper, "-", start=0, num=batch))
            if not members:
                return
            for raw in members:
                member = raw.decode()
                yield member, member.split(":", 1)[1]
            upper = "(" + members[-1].decode()

    def page(self, *, limit: int, cursor: str | None, keep: Callable[[str], bool]) -> tuple[list[str], str | None]:
        """Ids newest first for which ``keep(id)`` holds, at most ``limit``, and the cursor of the next page."""
        ids: list[str] = []
        last = ""
        for member, object_id in self._newest_first(cursor, batch=max(limit, 50)):
            if not keep(object_id):
                continue
            if len(ids) == limit:
                return ids, encode_cursor(last)
            ids.append(object_id)
            last = member
        return ids, None
