"""Object store fixtures: a local store under tmp_path, and S3 stores against a real moto server over HTTP."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from core.stores.local import LocalObjectStore
from core.stores.s3 import S3ObjectStore

URL_SECRET = b"test-url-secret"
PUBLIC_BASE_URL = "http://api.example.test:8000"

S3Factory = Callable[..., S3ObjectStore]


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def moto_port() -> Iterator[int]:
    """Port of one moto S3 server for the whole session; tests isolate themselves with their own bucket."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield port
    finally:
        server.stop()


@pytest.fixture
def make_s3_store(moto_port: int) -> S3Factory:
    """Build an ``S3ObjectStore`` on the moto server: a fresh bucket each call unless ``bucket`` is given."""

    def make(**overrides: object) -> S3ObjectStore:
        options: dict[str, object] = {
            "bucket": f"test-{uuid.uuid4().hex[:16]}",
            "endpoint_url": f"http://127.0.0.1:{moto_port}",
            "public_endpoint_url": None,
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
            "create_bucket": True,
            # moto answers at once; no point in waiting out retries when a test breaks the endpoint.
            "max_attempts": 1,
        }
        options.update(overrides)
        return S3ObjectStore(**options)  # type: ignore[arg-type]

    return make


@pytest.fixture
def s3_store(make_s3_store: S3Factory) -> S3ObjectStore:
    return make_s3_store()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "store", url_secret=URL_SECRET, public_base_url=PUBLIC_BASE_URL)
