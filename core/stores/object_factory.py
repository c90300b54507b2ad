"""``make_object_store``: the object store backend the settings name.

Kept apart from ``core.stores.objects`` (the seam the backends implement and import), so that no backend module
and the seam import each other.
"""

from __future__ import annotations

from core.config import StorageSettings
from core.stores.local import LocalObjectStore
from core.stores.objects import ObjectStore


def make_object_store(settings: StorageSettings) -> ObjectStore:
    """Build the backend that ``settings.backend`` names.

    With ``backend="s3"`` and ``create_bucket=True`` this talks to S3 once (to create the bucket when
    it is missing); otherwise nothing touches the network or the disk until the first call.

    Args:
        settings: the storage section of the service settings.

    Returns:
        A ``LocalObjectStore`` or an ``S3ObjectStore``.

    Raises:
        ObjectStoreError: when the bucket had to be created and could not be.
    """
    if settings.backend == "local":
        return LocalObjectStore(
            settings.root,
            url_secret=settings.url_secret.get_secret_value().encode(),
            public_base_url=settings.public_base_url,
        )
    # Imported here so that processes using the local backend never pay for importing boto3.
    from core.stores.s3 import S3ObjectStore

    return S3ObjectStore(
        bucket=settings.bucket,
        endpoint_url=settings.endpoint_url,
        public_endpoint_url=settings.public_endpoint_url,
        region=settings.region,
        access_key_id=settings.access_key_id,
        secret_access_key=(
            settings.secret_access_key.get_secret_value() if settings.secret_access_key is not None else None
        ),
        create_bucket=settings.create_bucket,
    )
