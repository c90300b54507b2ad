"""API keys beyond the static ones: created per tenant, stored only as SHA-256 hashes, revocable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import cast

import redis
from pydantic import BaseModel, Field
from redis.asyncio import Redis as AsyncRedis

from core.errors import NotFoundError
from core.job_record import new_id, utcnow

KEYS = "tessera:api-keys"  # hash: sha256(key) -> ApiKey JSON
KEY_IDS = "tessera:api-key-ids"  # hash: key id -> sha256(key)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKey(BaseModel):
    id: str
    tenant: str
    prefix: str = Field(description="The first characters of the key, to tell keys apart in listings.")
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ApiKeyStore:
    """Issued API keys, stored by hash. ``async_client``: an asyncio client of the same server, for ``atenant_of``
    (the API's authentication dependency; the CLI manages keys on the sync client)."""

    def __init__(self, client: redis.Redis, *, async_client: AsyncRedis | None = None) -> None:
        self._r = client
        self._ar = async_client

    def create(self, tenant: str) -> tuple[ApiKey, str]:
        """A new key for ``tenant``; the secret is returned once and never stored."""
        secret = "tsk_" + secrets.token_urlsafe(32)
        record = ApiKey(id=new_id("key"), tenant=tenant, prefix=secret[:10])
        digest = key_hash(secret)
        with self._r.pipeline() as pipe:
            pipe.hset(KEYS, digest, record.model_dump_json())
            pipe.hset(KEY_IDS, record.id, digest)
            pipe.execute()
        return record, secret

    async def atenant_of(self, secret: str) -> str | None:
        """The tenant of an active key (looked up by hash, so no timing depends on the secret's bytes), on the
        asyncio client: the API's authentication dependency."""
        if self._ar is None:
            raise RuntimeError("this ApiKeyStore has no async_client; make it with one to look keys up from asyncio")
        raw = cast(bytes | None, await self._ar.hget(KEYS, key_hash(secret)))
        if raw is None:
            return None
        record = ApiKey.model_validate_json(raw)
        return None if record.revoked_at else record.tenant

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        records = [ApiKey.model_validate_json(v) for v in cast(dict[bytes, bytes], self._r.hgetall(KEYS)).values()]
        return sorted((r for r in records if tenant is None or r.tenant == tenant), key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> ApiKey:
        digest = self._r.hget(KEY_IDS, key_id)
        raw = None if digest is None else self._r.hget(KEYS, cast(bytes, digest))
        if raw is None:
            raise NotFoundError(f"no API key {key_id}")
        record = ApiKey.model_validate_json(cast(bytes, raw))
        if record.revoked_at is None:
            record.revoked_at = utcnow()
            self._r.hset(KEYS, cast(bytes, digest), record.model_dump_json())
        return record
