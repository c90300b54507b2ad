"""Object storage: the ``ObjectStore`` seam and the key rules both backends share.

Two real backends implement it: ``LocalObjectStore`` (a directory; the dev, embedded and test
backend, in ``core.stores.local``) and ``S3ObjectStore`` (any S3 API: AWS, MinIO, moto; in
``core.stores.s3``, the only module that imports boto3). Keys are plain relative paths such as
``jobs/{job_id}/images/0.png``; they are validated here, once, so that a key that is fine on one
backend is fine on the other. The backends import this module and nothing imports them from here:
``core.stores.object_factory.make_object_store`` picks one.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from core.errors import InvalidRequestError

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_URL_EXPIRY_SECONDS",
    "ObjectStore",
    "SignedURL",
    "validate_content_type",
    "validate_expires_in",
    "validate_key",
    "validate_prefix",
    "write_file_atomic",
]

# S3 limits keys to 1024 bytes; the charset is ASCII, so characters == bytes.
MAX_KEY_LENGTH = 1024
# SigV4 presigned URLs cannot live longer than 7 days; the local backend follows the same rule.
MAX_URL_EXPIRY_SECONDS = 7 * 24 * 3600

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# type "/" subtype, then optional parameters: printable ASCII only, so a stored value can never smuggle
# a CR/LF into the Content-Type header it is later served with.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:[ \t]*;[\x20-\x7e]*)?")


@dataclass(frozen=True)
class SignedURL:
    """A short-lived URL that lets its holder GET one object without an API key.

    Args:
        url: the absolute URL, signed for the public address clients use.
        expires_at: when the URL stops working (timezone-aware, UTC).
    """

    url: str
    expires_at: datetime


@runtime_checkable
class ObjectStore(Protocol):
    """Bytes by key. Every method raises ``ObjectStoreError`` when the storage itself fails."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (replacing what was there), readers never see a partial object."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes; ``ObjectNotFoundError`` when there is none."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix`` (a plain string prefix); return how many."""
        ...

    def signed_url(self, key: str, *, expires_in: int) -> SignedURL:
        """A URL that downloads the object for ``expires_in`` seconds, signed for the public address."""
        ...

    def ping(self) -> None:
        """Raise ``ObjectStoreError`` naming what is wrong when the store cannot serve requests."""
        ...

    def get_to_path(self, key: str, dest: Path) -> Path:
        """Stream the object into ``dest`` (parents created, written atomically); return ``dest``."""
        ...


def validate_key(key: str) -> str:
    """Check that ``key`` is a well-formed object key and return it unchanged.

    A key is relative and ``/``-separated; every segment is non-empty, made of ``A-Z a-z 0-9 . _ -``
    and is neither ``.`` nor ``..``. These rules keep a key inside the local backend's root and mean
    the same object on S3 and on a filesystem.

    Args:
        key: the key to check.

    Returns:
        ``key`` itself.

    Raises:
        InvalidRequestError: with ``field="key"``, naming the rule broken and the key received.
    """
    _check_path(key, what="key", allow_trailing_slash=False)
    return key


def validate_prefix(prefix: str) -> str:
    """Check a key prefix for ``delete_prefix`` and return it unchanged.

    A prefix follows the key rules, may end with ``/`` and may stop in the middle of a segment
    (``jobs/job_12`` matches ``jobs/job_123/…``). The empty prefix is refused: wiping a whole
    store takes more than one call with a forgotten argument.

    Raises:
        InvalidRequestError: with ``field="prefix"``.
    """
    _check_path(prefix, what="prefix", allow_trailing_slash=True)
    return prefix


def validate_content_type(content_type: str) -> str:
    """Check a MIME type such as ``image/png`` (parameters allowed, at most 255 characters) and return it.

    Raises:
        InvalidRequestError: with ``field="content_type"``.
    """
    if not isinstance(content_type, str) or len(content_type) > 255 or not _CONTENT_TYPE.fullmatch(content_type):
        raise InvalidRequestError(
            f"content_type must be a MIME type such as 'image/png' (printable ASCII, at most 255 characters), "
            f"got {content_type!r:.300}",
            field="content_type",
        )
    return content_type


def validate_expires_in(expires_in: int) -> int:
    """Check a signed-URL lifetime (1 second to 7 days) and return it.

    Raises:
        InvalidRequestError: with ``field="expires_in"``.
    """
    # bool is an int subclass; True seconds is a bug, not a lifetime.
    if isinstance(expires_in, bool) or not isinstance(expires_in, int):
        raise InvalidRequestError(
            f"expires_in must be an integer number of seconds, got {expires_in!r}", field="expires_in"
        )
    if not 1 <= expires_in <= MAX_URL_EXPIRY_SECONDS:
        raise InvalidRequestError(
            f"expires_in must be between 1 and {MAX_URL_EXPIRY_SECONDS} seconds, got {expires_in}",
            field="expires_in",
        )
    return expires_in


def _check_path(value: str, *, what: str, allow_trailing_slash: bool) -> None:
    def refuse(rule: str) -> InvalidRequestError:
        return InvalidRequestError(f"{what} {rule}, got {value!r:.200}", field=what)

    if not isinstance(value, str):
        raise refuse("must be a string")
    if not value:
        raise refuse("must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidRequestError(f"{what} must be at most {MAX_KEY_LENGTH} characters, got {len(value)}", field=what)
    if "\\" in value:
        raise refuse("must use '/' as separator, not a backslash")
    if value.startswith("/"):
        raise refuse("must be relative (no leading '/')")
    body = value[:-1] if allow_trailing_slash and value.endswith("/") else value
    for segment in body.split("/"):
        if not segment:
            raise refuse("must not contain an empty segment ('//' or a trailing '/')")
        if segment in {".", ".."}:
            raise refuse("must not contain '.' or '..' segments")
        if not _SEGMENT.fullmatch(segment):
            raise refuse("may only contain A-Z, a-z, 0-9, '.', '_', '-' and '/'")


def write_file_atomic(dest: Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to a temporary file beside ``dest``, fsync it, then rename it onto ``dest``.

    Both backends download through this so that a worker killed mid-download never leaves a
    truncated file that a later run could mistake for a complete one. Parents are created.

    Raises:
        OSError: from the filesystem; whatever ``chunks`` raises while being iterated.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
