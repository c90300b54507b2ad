"""``S3ObjectStore``: the ``ObjectStore`` on any S3 API (AWS, MinIO, moto). The only module that imports boto3.

Three clients share one session:

- ``_client`` does the work, with SigV4, path-style addressing (MinIO and in-cluster names do not do
  virtual-host buckets) and standard-mode retries;
- ``_signer`` only presigns URLs. Its endpoint is the *public* one, because SigV4 signs the Host
  header: a URL signed for ``http://minio:9000`` cannot be rewritten to ``https://s3.example`` afterwards.
  Presigning is local computation, so this client never opens a connection;
- ``_probe`` answers ``ping`` with one attempt and short timeouts, so a readiness check reports an
  outage in seconds instead of waiting out the retry schedule.

Every boto3/botocore error leaves this module as ``ObjectStoreError`` or ``ObjectNotFoundError`` through
one context manager, ``_map_errors``, with the original exception as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from core.errors import ObjectNotFoundError, ObjectStoreError
from core.stores.objects import (
    SignedURL,
    validate_content_type,
    validate_expires_in,
    validate_key,
    validate_prefix,
    write_file_atomic,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

logger = logging.getLogger(__name__)

__all__ = ["S3ObjectStore"]

# What S3 and its look-alikes answer for a missing key: GetObject says NoSuchKey, HeadObject (no body)
# only has the status code.
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_DOWNLOAD_CHUNK = 1024 * 1024
_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


class S3ObjectStore:
    """An ``ObjectStore`` on an S3 bucket.

    Args:
        bucket: the bucket that holds every object.
        endpoint_url: the S3 endpoint this process talks to (``http://minio:9000``); ``None`` = AWS.
        public_endpoint_url: the endpoint browsers reach, which presigned URLs are signed for;
            ``None`` = ``endpoint_url``.
        region: the bucket's region (part of the SigV4 scope).
        access_key_id: the access key; ``None`` (with ``secret_access_key``) = the default AWS credential
            chain (environment, profile, instance role).
        secret_access_key: the secret key.
        create_bucket: create the bucket now when it is missing (development, compose, tests).
        max_attempts: attempts per request, the first included (botocore standard retry mode).
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds to wait for a response chunk.

    Raises:
        ValueError: only one of ``access_key_id`` / ``secret_access_key`` is given, or ``bucket`` is empty.
        ObjectStoreError: ``create_bucket`` is set and the bucket could not be checked or created.
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = False,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if not bucket:
            raise ValueError("bucket must not be empty")
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (default credential chain)")
        self._bucket = bucket
        self._region = region
        self._endpoint = endpoint_url or f"AWS S3 ({region})"
        with self._map_errors("configure client for", None):
            session = boto3.session.Session(
                aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
            )
            self._client: S3Client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                config=_client_config(max_attempts, connect_timeout, read_timeout),
            )
            self._signer: S3Client = session.client(
                "s3",
                endpoint_url=public_endpoint_url or endpoint_url,
                config=_client_config(max_attempts, connect_timeout, read_timeout),
            )
            self._probe: S3Client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                config=_client_config(1, min(connect_timeout, 2.0), min(read_timeout, 5.0)),
            )
        if create_bucket:
            self.ensure_bucket()

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self._bucket!r}, endpoint={self._endpoint!r})"

    @property
    def bucket(self) -> str:
        """The bucket this store writes to."""
        return self._bucket

    # -- ObjectStore -------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` with ``content_type`` (S3 PUTs are atomic per object)."""
        validate_key(key)
        validate_content_type(content_type)
        with self._map_errors("put", key):
            self._client.put_object(Bucket=self._bucket, Key=key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        """Return the bytes stored under ``key``.

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
        """
        validate_key(key)
        with self._map_errors("get", key):
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (one HEAD request)."""
        validate_key(key)
        try:
            with self._map_errors("head", key):
                self._client.head_object(Bucket=self._bucket, Key=key)
        except ObjectNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove the object; S3 answers success for a missing key, so this is idempotent."""
        validate_key(key)
        with self._map_errors("delete", key):
            self._client.delete_object(Bucket=self._bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``, 1000 per request; return how many.

        Raises:
            ObjectStoreError: listing failed, or S3 refused to delete some keys (the first is named).
        """
        validate_prefix(prefix)
        removed = 0
        with self._map_errors("delete_prefix", prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=self._bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
            for page in pages:
                batch: list[ObjectIdentifierTypeDef] = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                for start in range(0, len(batch), _DELETE_BATCH):
                    chunk = batch[start : start + _DELETE_BATCH]
                    response = self._client.delete_objects(
                        Bucket=self._bucket, Delete={"Objects": chunk, "Quiet": True}
                    )
                    errors = response.get("Errors", [])
                    if errors:
                        first = errors[0]
                        raise ObjectStoreError(
                            f"S3 refused to delete {len(errors)} of {len(chunk)} objects under "
                            f"s3://{self._bucket}/{prefix}; first: {first.get('Key')!r}: "
                            f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                        )
                    removed += len(chunk)
        logger.debug("deleted %d objects under s3://%s/%s", removed, self._bucket, prefix)
        return removed

    def signed_url(self, key: str, *, expires_in: int) -> SignedURL:
        """A presigned GET URL, signed for ``public_endpoint_url``; computed locally, no request is made.

        Raises:
            ObjectStoreError: no credentials to sign with.
        """
        validate_key(key)
        validate_expires_in(expires_in)
        # Take the time before signing: the URL's own clock (X-Amz-Date) is then never earlier, so the
        # reported expiry is never later than the real one.
        now = datetime.now(UTC).replace(microsecond=0)
        with self._map_errors("presign", key):
            url = self._signer.generate_presigned_url(
                "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_in
            )
        return SignedURL(url=url, expires_at=now + timedelta(seconds=expires_in))

    def ping(self) -> None:
        """Check that the endpoint answers, the credentials work and the bucket exists (one HEAD, no retries).

        Raises:
            ObjectStoreError: naming the endpoint and bucket, and what went wrong.
        """
        try:
            self._probe.head_bucket(Bucket=self._bucket)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NO_BUCKET_CODES:
                reason = "the bucket does not exist"
            elif code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
                reason = f"access denied, check the credentials ({code})"
            else:
                reason = f"{code}: {exc}"
            raise ObjectStoreError(f"S3 bucket {self._bucket!r} at {self._endpoint}: {reason}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise ObjectStoreError(
                f"S3 endpoint {self._endpoint} is unreachable (bucket {self._bucket!r}): {exc}"
            ) from exc

    def get_to_path(self, key: str, dest: Path) -> Path:
        """Stream the object into ``dest`` in 1 MiB chunks (parents created, replaced atomically).

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
            ObjectStoreError: the download or the local write failed.
        """
        validate_key(key)
        dest = Path(dest)
        with self._map_errors("download", key, dest=dest):
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
            try:
                write_file_atomic(dest, body.iter_chunks(_DOWNLOAD_CHUNK))
            finally:
                body.close()
        return dest

    # -- S3-only ----------------------------------------------------------------------------------

    def content_type(self, key: str) -> str:
        """The content type the object was stored with.

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
        """
        validate_key(key)
        with self._map_errors("head", key):
            head = self._client.head_object(Bucket=self._bucket, Key=key)
        return head.get("ContentType") or "application/octet-stream"

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist yet (a no-op when it does).

        Raises:
            ObjectStoreError: the bucket could not be checked or created.
        """
        try:
            with self._map_errors("head_bucket", None):
                self._client.head_bucket(Bucket=self._bucket)
            return
        except ObjectStoreError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, ClientError) and _error_code(cause) in _NO_BUCKET_CODES):
                raise
        with self._map_errors("create_bucket", None):
            try:
                if self._region == "us-east-1":
                    # us-east-1 rejects an explicit LocationConstraint naming itself.
                    self._client.create_bucket(Bucket=self._bucket)
                else:
                    self._client.create_bucket(
                        Bucket=self._bucket,
                        CreateBucketConfiguration={"LocationConstraint": self._region},  # type: ignore[typeddict-item]
                    )
            except ClientError as exc:
                # Another replica created it between our HEAD and CREATE: that is the outcome we wanted.
                if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
        logger.info("created bucket %r at %s", self._bucket, self._endpoint)

    # -- internals ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _map_errors(self, action: str, key: str | None, *, dest: Path | None = None) -> Iterator[None]:
        """The one place where boto3/botocore errors become the store's errors (``raise … from exc``)."""
        target = f"s3://{self._bucket}/{key}" if key is not None else f"s3://{self._bucket}"
        try:
            yield
        except ClientError as exc:
            code = _error_code(exc)
            if key is not None and code in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(f"object {target} not found") from exc
            message = exc.response.get("Error", {}).get("Message", "")
            detail = f"{code} {message}".rstrip()
            raise ObjectStoreError(f"S3 {action} {target} at {self._endpoint} failed: {detail}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise ObjectStoreError(f"S3 {action} {target} at {self._endpoint} failed: {exc}") from exc
        except OSError as exc:
            # Only get_to_path writes locally; botocore's own OSError subclasses were caught above.
            where = dest if dest is not None else "local file"
            raise ObjectStoreError(f"S3 {action} {target}: cannot write {where}: {exc}") from exc


def _client_config(max_attempts: int, connect_timeout: float, read_timeout: float) -> Config:
    return Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # compat: botocore >= 1.36 adds CRC checksums (aws-chunked uploads) to every PUT by default, which
        # several S3 look-alikes and older MinIO releases reject; send them only where the API requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def set_expiry_rules(store: S3ObjectStore, days_by_prefix: dict[str, int]) -> None:
    """Install bucket lifecycle rules that expire objects under each prefix after that many days."""
    rules = [
        {
            "ID": f"tessera-expire-{prefix.strip('/')}",
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "Expiration": {"Days": days},
        }
        for prefix, days in sorted(days_by_prefix.items())
    ]
    with store._map_errors("put lifecycle rules", None):
        store._client.put_bucket_lifecycle_configuration(
            Bucket=store.bucket,
            LifecycleConfiguration={"Rules": rules},  # type: ignore[typeddict-item]
        )
