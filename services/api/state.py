"""What the API process builds once at start-up and every route reads from ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import redis

from core.config import Settings
from core.presenter import Presenter
from core.stores.catalog import Catalog
from core.stores.idempotency import IdempotencyStore
from core.stores.job_store import JobStore
from core.stores.keys import ApiKeyStore
from core.stores.limits import RateLimiter
from core.stores.local import LocalObjectStore
from core.stores.objects import ObjectStore
from core.stores.webhook_store import WebhookStore
from core.submissions import Enqueue, Policy


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
    keys: ApiKeyStore
    rate_limiter: RateLimiter
    webhooks: WebhookStore
    idempotency: IdempotencyStore
    policy: Policy
    # Presenters for the addresses requests came in at, when no public address is configured (presenter_at).
    _presenters: dict[str, Presenter] = field(default_factory=dict)

    def presenter_at(self, base_url: str) -> Presenter:
        """The presenter for a request to ``base_url``: job URLs and local-store signed URLs point there.

        With ``storage.public_base_url`` configured, that address wins and every request shares one presenter;
        otherwise URLs follow the address the API is served at (``tessera api --port 9000`` signs for 9000).
        S3 presigned URLs point at the S3 endpoint either way.
        """
        if "public_base_url" in self.settings.storage.model_fields_set:
            return self.presenter
        base = base_url.rstrip("/")
        found = self._presenters.get(base)
        if found is not None:
            return found
        objects = self.objects
        if isinstance(objects, LocalObjectStore):
            secret = self.settings.storage.url_secret.get_secret_value().encode()
            try:
                objects = LocalObjectStore(objects.root, url_secret=secret, public_base_url=base)
            except ValueError:  # a Host header that makes no absolute URL: the configured address then
                return self.presenter
        found = replace(self.presenter, objects=objects, public_base_url=base)
        # The Host header is the client's to choose: keep a few, not one per name ever sent.
        if len(self._presenters) >= 16:
            self._presenters.clear()
        self._presenters[base] = found
        return found
