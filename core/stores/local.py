"""``LocalObjectStore``: objects as files under one directory, with HMAC-signed URLs served by the API.

Layout under ``root``::

    objects/<key>   the bytes, exactly as stored (the API streams this file)
    meta/<key>      JSON beside it: {"content_type": "..."}; mirrors objects/ path for path
    tmp/            partial writes; renamed into place with os.replace, so readers never see half a file

``meta/`` mirrors ``objects/`` exactly (no suffix) so the two trees can never disagree about whether a
path is a file or a directory. One limit follows from using a filesystem: ``a`` and ``a/b`` cannot both
exist (S3 allows it); storing the second one raises ``ObjectStoreError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from core.errors import InvalidRequestError, ObjectNotFoundError, ObjectStoreError
from core.stores.objects import (
    SignedURL,
    validate_content_type,
    validate_expires_in,
    validate_key,
    validate_prefix,
    write_file_atomic,
)

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONTENT_TYPE", "LocalObjectStore"]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_COPY_CHUNK = 1024 * 1024


class LocalObjectStore:
    """An ``ObjectStore`` on a local directory: the embedded-mode, development and test backend.

    Args:
        root: the directory that holds everything; created on first write.
        url_secret: HMAC key of signed URLs; anyone who knows it can mint URLs for any object.
        public_base_url: the API's public address (``https://tessera.example``); signed URLs point at
            ``{public_base_url}/v1/objects/{key}``, which the API serves after ``verify_signature``.

    Raises:
        ValueError: ``url_secret`` is empty or ``public_base_url`` is not an absolute http(s) URL.
    """

    def __init__(self, root: Path, *, url_secret: bytes, public_base_url: str) -> None:
        if not url_secret:
            raise ValueError("url_secret must not be empty: signed URLs would be forgeable")
        parts = urlsplit(public_base_url)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"public_base_url must be an absolute http(s) URL, got {public_base_url!r}")
        self._root = Path(root).absolute()
        self._objects = self._root / "objects"
        self._meta = self._root / "meta"
        self._tmp = self._root / "tmp"
        self._secret = bytes(url_secret)
        self._public_base_url = public_base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self._root)!r}, public_base_url={self._public_base_url!r})"

    @property
    def root(self) -> Path:
        """The directory this store keeps its files in."""
        return self._root

    # -- ObjectStore -------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` atomically, with its content type beside it.

        Raises:
            InvalidRequestError: bad ``key`` or ``content_type``.
            ObjectStoreError: the filesystem refused (full disk, permissions, ``key`` collides with a
                "directory" of other keys).
        """
        path = self._object_path(key)
        meta_path = self._meta_path(key)
        validate_content_type(content_type)
        meta = json.dumps({"content_type": content_type}).encode()
        with self._map_os_errors("write", key, missing_is_not_found=False):
            self._tmp.mkdir(parents=True, exist_ok=True)
            # Metadata first: a reader that sees the new bytes then also sees their content type.
            self._write_atomic(meta_path, meta)
            self._write_atomic(path, data)

    def get_bytes(self, key: str) -> bytes:
        """Return the bytes stored under ``key``.

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
        """
        path = self._object_path(key)
        with self._map_os_errors("read", key):
            return path.read_bytes()

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        path = self._object_path(key)
        with self._map_os_errors("stat", key):
            return path.is_file()

    def delete(self, key: str) -> None:
        """Remove the object and its metadata; a missing object is fine."""
        path = self._object_path(key)
        meta_path = self._meta_path(key)
        with self._map_os_errors("delete", key, missing_is_not_found=False):
            # A directory here means other keys live below this one; there is no object to delete.
            if not path.is_dir():
                self._unlink(path)
            if not meta_path.is_dir():
                self._unlink(meta_path)
            self._prune_empty_dirs(path.parent, self._objects)
            self._prune_empty_dirs(meta_path.parent, self._meta)

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; return how many were removed."""
        validate_prefix(prefix)
        # Only the directory that holds the prefix's last complete segment can contain matches.
        base_dir = prefix if prefix.endswith("/") else prefix.rpartition("/")[0]
        base = self._objects / base_dir if base_dir else self._objects
        self._check_inside(base, self._objects, prefix)
        removed = 0
        with self._map_os_errors("delete_prefix", prefix, missing_is_not_found=False):
            if not base.is_dir():
                return 0
            for dirpath, _dirnames, filenames in os.walk(base):
                for name in filenames:
                    key = Path(dirpath, name).relative_to(self._objects).as_posix()
                    if key.startswith(prefix):
                        self._unlink(self._objects / key)
                        self._unlink(self._meta / key)
                        removed += 1
            for tree in (self._objects, self._meta):
                start = tree / base_dir if base_dir else tree
                if start.is_dir():
                    self._prune_tree(start, tree)
        logger.debug("deleted %d objects under prefix %r", removed, prefix)
        return removed

    def signed_url(self, key: str, *, expires_in: int) -> SignedURL:
        """A URL to ``{public_base_url}/v1/objects/{key}`` valid for ``expires_in`` seconds.

        The query carries ``expires`` (unix seconds) and ``signature`` (hex HMAC-SHA256 over
        ``"{key}\\n{expires}"``); the API checks them with ``verify_signature``. Signing does not look at
        the disk: a URL for a missing object is valid and answers 404.
        """
        validate_key(key)
        validate_expires_in(expires_in)
        expires = int(time.time()) + expires_in
        query = urlencode({"expires": expires, "signature": self._sign(key, expires)})
        url = f"{self._public_base_url}/v1/objects/{quote(key, safe='/')}?{query}"
        return SignedURL(url=url, expires_at=datetime.fromtimestamp(expires, UTC))

    def ping(self) -> None:
        """Check that ``root`` exists (creating it) and is writable, by writing and removing a probe file.

        Raises:
            ObjectStoreError: naming the directory and what the filesystem said.
        """
        try:
            for directory in (self._objects, self._meta, self._tmp):
                directory.mkdir(parents=True, exist_ok=True)
            probe = self._tmp / f"ping-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ObjectStoreError(f"local object store at {self._root} is not writable: {exc}") from exc

    def get_to_path(self, key: str, dest: Path) -> Path:
        """Copy the object into ``dest`` in chunks (parents created, replaced atomically); return ``dest``.

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
            ObjectStoreError: reading or writing failed.
        """
        path = self._object_path(key)
        dest = Path(dest)
        with self._map_os_errors("download", key):
            with path.open("rb") as src:
                write_file_atomic(dest, iter(lambda: src.read(_COPY_CHUNK), b""))
        return dest

    # -- local-only: what the API needs to serve signed URLs --------------------------------------

    def verify_signature(self, key: str, expires: int, signature: str, *, now: datetime | None = None) -> bool:
        """Whether a signed URL's ``expires``/``signature`` pair is genuine and not yet expired.

        The comparison runs in constant time. A malformed key or signature is simply not valid.

        Args:
            key: the object key from the URL path.
            expires: the ``expires`` query parameter (unix seconds).
            signature: the ``signature`` query parameter (hex).
            now: the current time (tests pass one); defaults to the clock.
        """
        try:
            validate_key(key)
        except InvalidRequestError:
            return False
        current = (now or datetime.now(UTC)).timestamp()
        if isinstance(expires, bool) or not isinstance(expires, int) or current >= expires:
            return False
        expected = self._sign(key, expires).encode()
        return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))

    def open_path(self, key: str) -> Path:
        """The file that holds the object's bytes, for the API to stream.

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
        """
        path = self._object_path(key)
        if not path.is_file():
            raise ObjectNotFoundError(f"object {key!r} not found in {self._root}")
        return path

    def content_type(self, key: str) -> str:
        """The content type given when the object was stored (``application/octet-stream`` if unknown).

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
        """
        path = self._object_path(key)
        meta_path = self._meta_path(key)
        with self._map_os_errors("read metadata of", key):
            if not path.is_file():
                raise ObjectNotFoundError(f"object {key!r} not found in {self._root}")
            try:
                meta = json.loads(meta_path.read_bytes())
            except (FileNotFoundError, ValueError):
                # Written before metadata existed, or damaged by hand: serve bytes rather than fail.
                return DEFAULT_CONTENT_TYPE
        value = meta.get("content_type") if isinstance(meta, dict) else None
        return value if isinstance(value, str) else DEFAULT_CONTENT_TYPE

    # -- internals ---------------------------------------------------------------------------------

    def _sign(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _object_path(self, key: str) -> Path:
        path = self._objects / validate_key(key)
        self._check_inside(path, self._objects, key)
        return path

    def _meta_path(self, key: str) -> Path:
        path = self._meta / validate_key(key)
        self._check_inside(path, self._meta, key)
        return path

    @staticmethod
    def _check_inside(path: Path, tree: Path, key: str) -> None:
        # validate_key already rules out '..'; this also catches a symlink planted inside the root.
        if not path.resolve().is_relative_to(tree.resolve()):
            raise ObjectStoreError(f"key {key!r} resolves outside the object store root {tree}")

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            # A concurrent delete may prune the parent directory between mkdir and replace: retry once.
            for attempt in range(2):
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(tmp, path)
                    break
                except FileNotFoundError:
                    if attempt == 1 or not tmp.exists():
                        raise
        finally:
            self._unlink(tmp)

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    @staticmethod
    def _prune_empty_dirs(directory: Path, stop: Path) -> None:
        """Remove ``directory`` and its parents while they are empty, never ``stop`` itself."""
        while directory != stop and directory.is_relative_to(stop):
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): either way, stop climbing
                return
            directory = directory.parent

    def _prune_tree(self, start: Path, stop: Path) -> None:
        for dirpath, _dirnames, _filenames in os.walk(start, topdown=False):
            if Path(dirpath) != stop:
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        self._prune_empty_dirs(start.parent, stop)

    @contextlib.contextmanager
    def _map_os_errors(self, action: str, key: str, *, missing_is_not_found: bool = True) -> Iterator[None]:
        """Turn filesystem errors into the store's errors, keeping the cause."""
        try:
            yield
        except FileNotFoundError as exc:
            if missing_is_not_found:
                raise ObjectNotFoundError(f"object {key!r} not found in {self._root}") from exc
            raise ObjectStoreError(f"cannot {action} {key!r} in local object store {self._root}: {exc}") from exc
        except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
            raise ObjectStoreError(
                f"cannot {action} {key!r}: the local store cannot hold both a key and keys below it ({exc})"
            ) from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot {action} {key!r} in local object store {self._root}: {exc}") from exc
