"""What the API process builds once at start-up and every route reads from ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from core.config import Settings
from core.presenter import Presenter
from core.stores.catalog import Catalog
from core.stores.jobs import JobStore
from core.stores.objects import ObjectStore
from core.submissions import Enqueue


@dataclass
class ApiState:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    catalog: Catalog
    objects: ObjectStore
    enqueue: Enqueue
    tenant_by_key: dict[str, str]
    presenter: Presenter
