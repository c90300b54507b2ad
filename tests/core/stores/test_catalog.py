"""The catalog's concept lookups: by id or name, batched in one round trip, tenant-isolated."""

from __future__ import annotations

import pytest
import redis

from core.errors import NotFoundError
from core.stores.catalog import Catalog, ConceptRecord


def _concept(catalog: Catalog, tenant: str, name: str, concept_id: str) -> ConceptRecord:
    record = ConceptRecord(id=concept_id, tenant=tenant, name=name, class_word="dog", training_job_id="job_x")
    catalog.reserve_concept(record)
    return record


def test_find_concepts_by_name_and_id_in_one_call(redis_client: redis.Redis) -> None:
    catalog = Catalog(redis_client)
    rex = _concept(catalog, "t1", "rex", "cpt_rex1")
    _concept(catalog, "t2", "fido", "cpt_fido2")

    found = catalog.find_concepts("t1", ["rex", "cpt_rex1", "nobody", "cpt_fido2", "fido", "rex"])

    assert found["rex"] == found["cpt_rex1"] == rex
    # Missing, and another tenant's (by id or by name), look the same.
    assert found["nobody"] is None and found["cpt_fido2"] is None and found["fido"] is None
    assert catalog.find_concepts("t1", []) == {}
    assert catalog.get_concept("t2", "fido").id == "cpt_fido2"
    with pytest.raises(NotFoundError):
        catalog.get_concept("t1", "cpt_fido2")
