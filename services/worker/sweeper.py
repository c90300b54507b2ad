"""Runs the retention sweep periodically in every GPU worker (idempotent: concurrent sweeps are safe)."""

from __future__ import annotations

import logging
import threading

from core.config import RetentionSettings
from core.retention import expiry_days, sweep
from core.stores.catalog import Catalog
from core.stores.objects import ObjectStore

logger = logging.getLogger(__name__)


class Sweeper(threading.Thread):
    def __init__(self, catalog: Catalog, objects: ObjectStore, settings: RetentionSettings) -> None:
        super().__init__(name="tessera-retention", daemon=True)
        self._catalog, self._objects, self._settings = catalog, objects, settings
        self._stop = threading.Event()

    def run(self) -> None:
        self._install_lifecycle_rules()
        while True:
            try:
                sweep(self._catalog, self._objects, self._settings)
            except Exception:
                logger.exception("retention sweep failed")
            if self._stop.wait(self._settings.sweep_interval_seconds):
                return

    def _install_lifecycle_rules(self) -> None:
        from core.stores.s3 import S3ObjectStore, set_expiry_rules

        if isinstance(self._objects, S3ObjectStore):
            try:
                set_expiry_rules(self._objects, expiry_days(self._settings))
            except Exception:
                # The periodic sweep still deletes expired files; the rules are a second line.
                logger.exception("could not install S3 lifecycle rules")

    def stop(self) -> None:
        self._stop.set()
