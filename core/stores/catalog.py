"""Files and concepts of each tenant: their records in Redis (the bytes live in the object store).

Keys (prefix ``tessera:``): ``file:{id}``, ``concept:{id}``, ``tenant:{t}:files``, ``tenant:{t}:concepts``
(time indexes), ``tenant:{t}:concept-name:{name}`` (the name reservation that keeps names unique) and
``files:{purpose}`` (every file by creation time, for retention).

Object keys start with what the object is (``inputs/``, ``outputs/``, ``concepts/``), then the tenant, so
a bucket lifecycle rule can expire inputs and outputs by prefix.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field
from redis.asyncio import Redis as AsyncRedis

from core.errors import ConceptNameTakenError, NotFoundError
from core.job_record import utcnow
from core.stores.index import TimeIndex

PREFIX = "tessera:"


# Concept records for a list of keys: KEYS[i] is a record key (ARGV[i+1] == "1") or a name reservation
# holding the id. The second read's key is built in the script, so this needs a single Redis, not a cluster.
_LOOKUP_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local raw = false
  if ARGV[i + 1] == '1' then
    raw = redis.call('GET', key)
  else
    local id = redis.call('GET', key)
    if id then raw = redis.call('GET', ARGV[1] .. id) end
  end
  out[i] = raw
end
return out
"""

_NO_ASYNC_CLIENT = "this Catalog has no async_client; make it with one to read from asyncio"

FilePurpose = Literal["input", "output"]
# Object-key prefix per purpose (also the lifecycle-rule prefixes).
PURPOSE_PREFIX: dict[str, str] = {"input": "inputs/", "output": "outputs/"}


def file_key(tenant: str, file_id: str, purpose: FilePurpose = "input") -> str:
    """Object-store key of a file's bytes."""
    return f"{PURPOSE_PREFIX[purpose]}{tenant}/{file_id}"


def adapter_key(tenant: str, concept_id: str) -> str:
    """Object-store key of a concept's ED-LoRA adapter."""
    return f"concepts/{tenant}/{concept_id}/adapter.safetensors"


class FileRecord(BaseModel):
    id: str
    tenant: str
    content_type: str
    bytes: int
    width: int
    height: int
    sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    # "input" for uploads, "output" for what jobs produced (same API, different retention later).
    purpose: FilePurpose = "input"

    @property
    def key(self) -> str:
        return file_key(self.tenant, self.id, self.purpose)


class ConceptRecord(BaseModel):
    id: str
    tenant: str
    name: str
    class_word: str
    status: Literal["training", "ready", "failed"] = "training"
    training_job_id: str
    created_at: datetime = Field(default_factory=utcnow)
    adapter_bytes: int | None = None
    adapter_sha256: str | None = None
    adapter_format: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def adapter_key(self) -> str:
        return adapter_key(self.tenant, self.id)


class Catalog:
    """Tenant-scoped records of files and concepts; another tenant's id reads as a missing one.

    Args:
        client: a redis-py client.
        async_client: an asyncio client of the same server, for the ``a``-prefixed reads the API's create path
            makes without leaving its event loop.
    """

    def __init__(self, client: redis.Redis, *, async_client: AsyncRedis | None = None) -> None:
        self._r = client
        self._ar = async_client
        self._lookup = client.register_script(_LOOKUP_SCRIPT)
        self._alookup = None if async_client is None else async_client.register_script(_LOOKUP_SCRIPT)

    def _async(self) -> AsyncRedis:
        if self._ar is None:
            raise RuntimeError(_NO_ASYNC_CLIENT)
        return self._ar

    # ---- files
    def add_file(self, record: FileRecord) -> None:
        with self._r.pipeline() as pipe:
            pipe.set(f"{PREFIX}file:{record.id}", record.model_dump_json())
            TimeIndex(self._r, f"{PREFIX}tenant:{record.tenant}:files").add(record.created_at, record.id, pipe)
            pipe.zadd(f"{PREFIX}files:{record.purpose}", {record.id: record.created_at.timestamp()})
            pipe.execute()

    def files_created_before(self, purpose: FilePurpose, before: float, *, limit: int = 500) -> list[str]:
        """Ids of files of ``purpose`` created before the unix time ``before``, oldest first."""
        ids = self._r.zrangebyscore(f"{PREFIX}files:{purpose}", "-inf", before, start=0, num=limit)
        return [i.decode() for i in cast(list[bytes], ids)]

    def file_record(self, file_id: str) -> FileRecord | None:
        """A file's record whatever its tenant (the retention sweeper; a worker storing an output again)."""
        raw = self._r.get(f"{PREFIX}file:{file_id}")
        return None if raw is None else FileRecord.model_validate_json(raw)

    def forget_file(self, purpose: FilePurpose, file_id: str) -> None:
        self._r.zrem(f"{PREFIX}files:{purpose}", file_id)

    def get_file(self, tenant: str, file_id: str) -> FileRecord:
        record = self.get_files(tenant, [file_id])[file_id]
        if record is None:
            raise NotFoundError(f"no file {file_id}")
        return record

    def get_files(self, tenant: str, file_ids: list[str]) -> dict[str, FileRecord | None]:
        """Files by id, all in one round trip; ``None`` for an id the tenant has no file for."""
        unique = list(dict.fromkeys(file_ids))
        if not unique:
            return {}
        raws = cast(list[bytes | None], self._r.mget([f"{PREFIX}file:{i}" for i in unique]))
        return _tenant_files(tenant, unique, raws)

    async def aget_files(self, tenant: str, file_ids: list[str]) -> dict[str, FileRecord | None]:
        """``get_files`` on the asyncio client."""
        unique = list(dict.fromkeys(file_ids))
        if not unique:
            return {}
        raws = cast(list[bytes | None], await self._async().mget([f"{PREFIX}file:{i}" for i in unique]))
        return _tenant_files(tenant, unique, raws)

    def delete_file(self, record: FileRecord) -> None:
        with self._r.pipeline() as pipe:
            pipe.delete(f"{PREFIX}file:{record.id}")
            pipe.zrem(f"{PREFIX}files:{record.purpose}", record.id)
            TimeIndex(self._r, f"{PREFIX}tenant:{record.tenant}:files").remove(record.created_at, record.id, pipe)
            pipe.execute()

    # ---- concepts
    def _name_key(self, tenant: str, name: str) -> str:
        return f"{PREFIX}tenant:{tenant}:concept-name:{name}"

    def reserve_concept(self, record: ConceptRecord) -> None:
        """Store a new concept; ``ConceptNameTakenError`` if the tenant already has one of that name."""
        if not self._r.set(self._name_key(record.tenant, record.name), record.id, nx=True):
            raise ConceptNameTakenError(f"concept name {record.name!r} is taken; delete that concept or pick another")
        with self._r.pipeline() as pipe:
            pipe.set(f"{PREFIX}concept:{record.id}", record.model_dump_json())
            TimeIndex(self._r, f"{PREFIX}tenant:{record.tenant}:concepts").add(record.created_at, record.id, pipe)
            pipe.execute()

    def save_concept(self, record: ConceptRecord) -> None:
        self._r.set(f"{PREFIX}concept:{record.id}", record.model_dump_json())

    def fail_concept(self, tenant: str, concept_id: str) -> ConceptRecord:
        """Mark a concept ``failed``: its training failed, was canceled, or could not be queued. Returns it."""
        concept = self.get_concept(tenant, concept_id)
        concept.status = "failed"
        self.save_concept(concept)
        return concept

    def get_concept(self, tenant: str, ref: str) -> ConceptRecord:
        """A concept by id (``cpt_…``) or by name."""
        record = self.find_concepts(tenant, [ref])[ref]
        if record is None:
            raise NotFoundError(f"no concept {ref}")
        return record

    def _lookup_call(self, tenant: str, unique: list[str]) -> tuple[list[str], list[str]]:
        """The lookup script's keys and args for distinct refs: ids directly, names through their reservation."""
        keys = [f"{PREFIX}concept:{ref}" if ref.startswith("cpt_") else self._name_key(tenant, ref) for ref in unique]
        direct = ["1" if ref.startswith("cpt_") else "0" for ref in unique]
        return keys, [f"{PREFIX}concept:", *direct]

    def find_concepts(self, tenant: str, refs: list[str]) -> dict[str, ConceptRecord | None]:
        """Concepts by id or name, all in one round trip; ``None`` for a ref the tenant has no concept for."""
        unique = list(dict.fromkeys(refs))
        if not unique:
            return {}
        keys, args = self._lookup_call(tenant, unique)
        return _tenant_concepts(tenant, unique, cast(list[bytes | None], self._lookup(keys=keys, args=args)))

    async def afind_concepts(self, tenant: str, refs: list[str]) -> dict[str, ConceptRecord | None]:
        """``find_concepts`` on the asyncio client."""
        unique = list(dict.fromkeys(refs))
        if not unique:
            return {}
        if self._alookup is None:
            raise RuntimeError(_NO_ASYNC_CLIENT)
        keys, args = self._lookup_call(tenant, unique)
        raws = cast(list[bytes | None], await self._alookup(keys=keys, args=args))
        return _tenant_concepts(tenant, unique, raws)

    def list_concepts(self, tenant: str, *, limit: int, cursor: str | None) -> tuple[list[ConceptRecord], str | None]:
        found: dict[str, ConceptRecord] = {}

        def keep(concept_id: str) -> bool:
            try:
                found[concept_id] = self.get_concept(tenant, concept_id)
            except NotFoundError:
                return False
            return True

        index = TimeIndex(self._r, f"{PREFIX}tenant:{tenant}:concepts")
        ids, next_cursor = index.page(limit=limit, cursor=cursor, keep=keep)
        return [found[i] for i in ids], next_cursor

    def delete_concept(self, record: ConceptRecord) -> None:
        with self._r.pipeline() as pipe:
            pipe.delete(f"{PREFIX}concept:{record.id}")
            # Free the name only if it still points at this concept.
            pipe.delete(self._name_key(record.tenant, record.name))
            TimeIndex(self._r, f"{PREFIX}tenant:{record.tenant}:concepts").remove(record.created_at, record.id, pipe)
            pipe.execute()


def _tenant_files(tenant: str, ids: list[str], raws: list[bytes | None]) -> dict[str, FileRecord | None]:
    """The records of ``ids`` read as ``raws``; another tenant's file reads as missing."""
    found: dict[str, FileRecord | None] = {}
    for file_id, raw in zip(ids, raws, strict=True):
        record = None if raw is None else FileRecord.model_validate_json(raw)
        found[file_id] = record if record is not None and record.tenant == tenant else None
    return found


def _tenant_concepts(tenant: str, refs: list[str], raws: list[bytes | None]) -> dict[str, ConceptRecord | None]:
    """The concepts of ``refs`` read as ``raws``; another tenant's concept reads as missing."""
    found: dict[str, ConceptRecord | None] = {}
    for ref, raw in zip(refs, raws, strict=True):
        record = None if not raw else ConceptRecord.model_validate_json(raw)
        found[ref] = record if record is not None and record.tenant == tenant else None
    return found
