"""The ``ObjectStore`` contract, run against both real backends (a directory, and S3 via moto over HTTP)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from core.config import StorageSettings
from core.errors import InvalidRequestError, ObjectNotFoundError, ObjectStoreError
from core.stores.local import LocalObjectStore
from core.stores.object_factory import make_object_store
from core.stores.objects import ObjectStore, validate_key
from core.stores.s3 import S3ObjectStore
from tests.core.stores.conftest import PUBLIC_BASE_URL, URL_SECRET, S3Factory, free_port

Store = LocalObjectStore | S3ObjectStore

PNG = b"\x89PNG\r\n\x1a\n" + b"not really pixels" * 10

BAD_KEYS = [
    "",
    "/abs/key",
    "a/../b",
    "..",
    "../escape",
    "a/./b",
    ".",
    "a//b",
    "a/",
    "a\\b",
    "with space",
    "caf\u00e9",
    "a?b",
    "a%2Fb",
    "x" * 1025,
]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Store:
    backend: Store = request.getfixturevalue(f"{request.param}_store")
    return backend


# -- the contract -------------------------------------------------------------------------------


def test_is_an_object_store(store: Store) -> None:
    assert isinstance(store, ObjectStore)


def test_put_get_round_trip_and_overwrite(store: Store) -> None:
    store.put_bytes("jobs/job_1/inputs/a.png", PNG, "image/png")
    assert store.get_bytes("jobs/job_1/inputs/a.png") == PNG

    store.put_bytes("jobs/job_1/inputs/a.png", b"second", "application/octet-stream")
    assert store.get_bytes("jobs/job_1/inputs/a.png") == b"second"


def test_empty_object(store: Store) -> None:
    store.put_bytes("empty.bin", b"", "application/octet-stream")
    assert store.exists("empty.bin")
    assert store.get_bytes("empty.bin") == b""


def test_content_type_is_kept(store: Store) -> None:
    store.put_bytes("files/f.webp", b"RIFF", "image/webp")
    assert store.content_type("files/f.webp") == "image/webp"
    store.put_bytes("files/f.webp", b"RIFF", "image/png")
    assert store.content_type("files/f.webp") == "image/png"


@pytest.mark.parametrize("content_type", ["", "png", "image/png\r\nX-Evil: 1", "image/p\u00e9ng", "a/b" * 100])
def test_bad_content_type_refused(store: Store, content_type: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        store.put_bytes("k", b"x", content_type)
    assert info.value.field == "content_type"
    assert not store.exists("k")


def test_exists_and_delete_are_idempotent(store: Store) -> None:
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")  # nothing there: not an error

    store.put_bytes("a/b.txt", b"hello", "text/plain")
    assert store.exists("a/b.txt")
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")


def test_exists_is_false_for_a_prefix(store: Store) -> None:
    store.put_bytes("dir/file", b"x", "text/plain")
    assert not store.exists("dir")
    store.delete("dir")  # "dir" is not an object; its children survive
    assert store.get_bytes("dir/file") == b"x"


def test_delete_prefix(store: Store) -> None:
    for key in ("jobs/a/1.png", "jobs/a/deep/2.png", "jobs/ab/3.png", "jobs/b/4.png", "other/5.png"):
        store.put_bytes(key, key.encode(), "image/png")

    assert store.delete_prefix("jobs/a/") == 2
    assert not store.exists("jobs/a/1.png")
    assert not store.exists("jobs/a/deep/2.png")
    assert store.exists("jobs/ab/3.png")

    # A prefix is a string prefix, as in S3, not a directory.
    assert store.delete_prefix("jobs/a") == 1
    assert not store.exists("jobs/ab/3.png")

    assert store.delete_prefix("jobs/a") == 0
    assert store.delete_prefix("missing/") == 0
    assert store.get_bytes("jobs/b/4.png") == b"jobs/b/4.png"
    assert store.get_bytes("other/5.png") == b"other/5.png"

    # Pruned directories do not get in the way of new writes.
    store.put_bytes("jobs/a/1.png", b"again", "image/png")
    assert store.get_bytes("jobs/a/1.png") == b"again"


@pytest.mark.parametrize("prefix", ["", "/jobs", "jobs/../x", "jobs//a"])
def test_bad_prefix_refused(store: Store, prefix: str) -> None:
    store.put_bytes("jobs/a", b"x", "text/plain")
    with pytest.raises(InvalidRequestError) as info:
        store.delete_prefix(prefix)
    assert info.value.field == "prefix"
    assert store.exists("jobs/a")


def test_missing_object(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"nope/missing\.png"):
        store.get_bytes("nope/missing.png")
    with pytest.raises(ObjectNotFoundError):
        store.get_to_path("nope/missing.png", tmp_path / "out.png")
    with pytest.raises(ObjectNotFoundError):
        store.content_type("nope/missing.png")
    assert not (tmp_path / "out.png").exists()


def test_get_to_path_streams_into_a_new_directory(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    store.put_bytes("adapters/c.safetensors", data, "application/octet-stream")
    dest = tmp_path / "cache" / "nested" / "c.safetensors"

    assert store.get_to_path("adapters/c.safetensors", dest) == dest
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["c.safetensors"]  # no temporary file left behind


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_refused_everywhere(store: Store, key: str, tmp_path: Path) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put_bytes(key, b"x", "text/plain"),
        lambda: store.get_bytes(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.signed_url(key, expires_in=60),
        lambda: store.get_to_path(key, tmp_path / "out"),
        lambda: store.content_type(key),
    ]
    for call in calls:
        with pytest.raises(InvalidRequestError) as info:
            call()
        assert info.value.field == "key"


@pytest.mark.parametrize("expires_in", [0, -1, 7 * 24 * 3600 + 1])
def test_signed_url_lifetime_bounded(store: Store, expires_in: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        store.signed_url("a.png", expires_in=expires_in)
    assert info.value.field == "expires_in"


def test_signed_url_expiry(store: Store) -> None:
    before = datetime.now(UTC)
    signed = store.signed_url("a.png", expires_in=600)
    assert signed.expires_at.tzinfo is not None
    assert signed.expires_at.utcoffset() == timedelta(0)
    assert before + timedelta(seconds=598) <= signed.expires_at <= before + timedelta(seconds=601)


def test_ping_ok(store: Store) -> None:
    store.ping()


# -- signed URLs, per backend -------------------------------------------------------------------


def test_s3_signed_url_downloads_over_http(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("jobs/j/images/0.png", PNG, "image/png")
    signed = s3_store.signed_url("jobs/j/images/0.png", expires_in=300)

    query = parse_qs(urlsplit(signed.url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["300"]
    response = httpx.get(signed.url)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"


def test_s3_signed_url_is_signed_for_the_public_endpoint(make_s3_store: S3Factory, moto_port: int) -> None:
    store = make_s3_store(
        endpoint_url=f"http://127.0.0.1:{moto_port}", public_endpoint_url=f"http://localhost:{moto_port}"
    )
    store.put_bytes("out/0.png", PNG, "image/png")

    signed = store.signed_url("out/0.png", expires_in=60)
    parts = urlsplit(signed.url)
    assert parts.netloc == f"localhost:{moto_port}"
    assert parts.path == f"/{store.bucket}/out/0.png"  # path-style addressing
    assert httpx.get(signed.url).content == PNG


def test_local_signed_url_verifies(local_store: LocalObjectStore) -> None:
    local_store.put_bytes("jobs/j/images/0.png", PNG, "image/png")
    signed = local_store.signed_url("jobs/j/images/0.png", expires_in=300)

    parts = urlsplit(signed.url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_BASE_URL
    assert parts.path == "/v1/objects/jobs/j/images/0.png"
    query = parse_qs(parts.query)
    expires, signature = int(query["expires"][0]), query["signature"][0]
    assert expires == int(signed.expires_at.timestamp())

    key = parts.path.removeprefix("/v1/objects/")
    assert local_store.verify_signature(key, expires, signature)
    # What the API serves for a valid URL.
    assert local_store.open_path(key).read_bytes() == PNG
    assert local_store.content_type(key) == "image/png"


def test_local_signed_url_refuses_tampering_and_expiry(local_store: LocalObjectStore) -> None:
    signed = local_store.signed_url("a/b.png", expires_in=300)
    query = parse_qs(urlsplit(signed.url).query)
    expires, signature = int(query["expires"][0]), query["signature"][0]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]

    assert local_store.verify_signature("a/b.png", expires, signature)
    assert not local_store.verify_signature("a/b.png", expires, flipped)
    assert not local_store.verify_signature("a/c.png", expires, signature)  # another object
    assert not local_store.verify_signature("a/b.png", expires + 3600, signature)  # extended lifetime
    assert not local_store.verify_signature("a/b.png", expires, signature.upper())
    assert not local_store.verify_signature("a/b.png", expires, "")
    assert not local_store.verify_signature("a/b.png", expires, "\u00e9" * 64)
    assert not local_store.verify_signature("../b.png", expires, signature)
    # Expired: at and after the expiry instant, not one second before.
    assert not local_store.verify_signature("a/b.png", expires, signature, now=signed.expires_at)
    assert not local_store.verify_signature("a/b.png", expires, signature, now=signed.expires_at + timedelta(days=1))
    assert local_store.verify_signature("a/b.png", expires, signature, now=signed.expires_at - timedelta(seconds=1))


def test_local_signature_depends_on_the_secret(tmp_path: Path, local_store: LocalObjectStore) -> None:
    other = LocalObjectStore(tmp_path / "store", url_secret=b"another secret", public_base_url=PUBLIC_BASE_URL)
    query = parse_qs(urlsplit(other.signed_url("a.png", expires_in=60).url).query)
    assert not local_store.verify_signature("a.png", int(query["expires"][0]), query["signature"][0])


# -- failures -----------------------------------------------------------------------------------


def test_s3_ping_fails_on_a_dead_endpoint(make_s3_store: S3Factory) -> None:
    port = free_port()
    store = make_s3_store(endpoint_url=f"http://127.0.0.1:{port}", create_bucket=False)
    with pytest.raises(ObjectStoreError, match=f"127.0.0.1:{port}") as info:
        store.ping()
    assert isinstance(info.value.__cause__, BotoCoreError)


def test_s3_errors_are_mapped_with_their_cause(make_s3_store: S3Factory) -> None:
    dead = make_s3_store(endpoint_url=f"http://127.0.0.1:{free_port()}", create_bucket=False)
    with pytest.raises(ObjectStoreError) as info:
        dead.put_bytes("a.png", PNG, "image/png")
    assert not isinstance(info.value, ObjectNotFoundError)
    assert isinstance(info.value.__cause__, BotoCoreError)


def test_s3_missing_bucket_is_a_store_error_not_a_missing_object(make_s3_store: S3Factory) -> None:
    store = make_s3_store(bucket="never-created", create_bucket=False)
    with pytest.raises(ObjectStoreError, match="does not exist"):
        store.ping()
    with pytest.raises(ObjectStoreError) as info:
        store.get_bytes("a.png")
    assert type(info.value) is ObjectStoreError
    assert isinstance(info.value.__cause__, ClientError)


def test_s3_ensure_bucket_is_idempotent(s3_store: S3ObjectStore) -> None:
    s3_store.ensure_bucket()
    s3_store.ping()


def test_s3_delete_prefix_pages_through_many_objects(s3_store: S3ObjectStore) -> None:
    for i in range(25):
        s3_store.put_bytes(f"many/{i:03d}", b"x", "text/plain")
    assert s3_store.delete_prefix("many/") == 25
    assert not s3_store.exists("many/000")


def test_local_ping_fails_when_root_is_not_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "a-file"
    root.write_bytes(b"")
    store = LocalObjectStore(root, url_secret=URL_SECRET, public_base_url=PUBLIC_BASE_URL)
    with pytest.raises(ObjectStoreError, match="a-file"):
        store.ping()


def test_local_never_leaves_root_through_a_symlink(tmp_path: Path, local_store: LocalObjectStore) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    local_store.ping()  # creates the tree
    (local_store.root / "objects" / "link").symlink_to(outside)

    with pytest.raises(ObjectStoreError, match="outside"):
        local_store.get_bytes("link/secret")
    with pytest.raises(ObjectStoreError):
        local_store.put_bytes("link/new", b"x", "text/plain")
    assert not (outside / "new").exists()


def test_local_writes_are_atomic_and_leave_no_temporary_files(local_store: LocalObjectStore) -> None:
    local_store.put_bytes("a/b.png", PNG, "image/png")
    local_store.put_bytes("a/b.png", PNG[::-1], "image/png")
    assert list((local_store.root / "tmp").iterdir()) == []
    assert local_store.get_bytes("a/b.png") == PNG[::-1]


def test_local_key_below_an_existing_key_is_a_store_error(local_store: LocalObjectStore) -> None:
    local_store.put_bytes("a", b"x", "text/plain")
    with pytest.raises(ObjectStoreError, match="cannot hold both"):
        local_store.put_bytes("a/b", b"y", "text/plain")
    assert local_store.get_bytes("a") == b"x"


def test_local_constructor_refuses_unsafe_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="url_secret"):
        LocalObjectStore(tmp_path, url_secret=b"", public_base_url=PUBLIC_BASE_URL)
    with pytest.raises(ValueError, match="public_base_url"):
        LocalObjectStore(tmp_path, url_secret=URL_SECRET, public_base_url="api.example.test")


def test_local_signed_url_trims_the_base_url_slash(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, url_secret=URL_SECRET, public_base_url="https://x.test/tessera/")
    assert store.signed_url("k.png", expires_in=60).url.startswith("https://x.test/tessera/v1/objects/k.png?")


# -- keys and the factory -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a", "a.png", "jobs/job_01H/inputs/0.png", "A-b_c.d/e", "x" * 1024, ".hidden"])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


def test_bad_key_error_names_the_rule_and_value() -> None:
    with pytest.raises(InvalidRequestError, match=r"'\.\.' segments.*'a/\.\./b'"):
        validate_key("a/../b")


def test_make_object_store_local(tmp_path: Path) -> None:
    settings = StorageSettings(backend="local", root=tmp_path / "objs", url_secret=SecretStr("s"))
    store = make_object_store(settings)
    assert isinstance(store, LocalObjectStore)
    store.put_bytes("k", b"v", "text/plain")
    assert (tmp_path / "objs" / "objects" / "k").read_bytes() == b"v"


def test_make_object_store_s3(moto_port: int) -> None:
    settings = StorageSettings(
        backend="s3",
        bucket="factory-bucket",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        public_endpoint_url=f"http://localhost:{moto_port}",
        access_key_id="testing",
        secret_access_key=SecretStr("testing"),
        create_bucket=True,
    )
    store = make_object_store(settings)
    assert isinstance(store, S3ObjectStore)
    store.ping()
    assert urlsplit(store.signed_url("k", expires_in=60).url).netloc == f"localhost:{moto_port}"
