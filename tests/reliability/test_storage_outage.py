"""The object store goes away under a worker's store (a real S3 endpoint, moto's server, stopped and started on its
port): calls ride out a short outage with backoff, and a long one fails with ``storage_unavailable``; through the
whole service (API, worker process), a generation whose store goes down mid-job still succeeds."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from tessera_client import TesseraClient

from core.errors import ObjectNotFoundError, ObjectStoreError
from core.stores.retrying import RetryingObjectStore, open_retrying
from core.stores.s3 import S3ObjectStore
from services.demo import sample_images
from services.embedded import Stack
from services.processes import Child, free_port, wait_for
from tests.reliability import ledger
from tests.reliability.proxy import Outage


class Moto:
    """moto's S3 server on a fixed port, which the test may stop and start again (its buckets are in memory)."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child | None = None

    def start(self) -> None:
        argv = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.child = Child("moto", argv, log=self.folder / "moto.log")
        wait_for(lambda: httpx.get(self.url, timeout=2).status_code < 500, what="moto server", child=self.child)

    def stop(self) -> None:
        if self.child is not None:
            self.child.kill()
            self.child.stop()
            self.child = None


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[Moto]:
    server = Moto(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _s3(url: str) -> S3ObjectStore:
    return S3ObjectStore(
        bucket="outage",
        endpoint_url=url,
        public_endpoint_url=url,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        create_bucket=True,
    )


def test_a_short_outage_is_ridden_out_and_a_long_one_fails_with_a_code(moto: Moto) -> None:
    backend = _s3(moto.url)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # the store comes back during the second wait
            moto.start()
            backend.ensure_bucket()  # its buckets were in memory

    store = RetryingObjectStore(backend, [0.1, 0.2, 0.4], sleep=sleep)
    store.put_bytes("inputs/a", b"before", "application/octet-stream")
    moto.stop()
    store.put_bytes("outputs/b", b"after", "application/octet-stream")  # fails twice, then lands
    assert waits == [0.1, 0.2] and store.get_bytes("outputs/b") == b"after"
    with pytest.raises(ObjectNotFoundError):  # an answer, not an outage: no retry
        store.get_bytes("outputs/missing")
    assert waits == [0.1, 0.2]
    short_ok = True
    ledger.record("fault", "object-store-short-outage", ok=short_ok)

    moto.stop()
    gave_up = RetryingObjectStore(backend, [0.05, 0.05])
    with pytest.raises(ObjectStoreError) as failed:
        gave_up.get_bytes("outputs/b")
    assert failed.value.code == "storage_unavailable" and "3 times" in failed.value.message
    ledger.record("fault", "object-store-long-outage", ok=True)


def test_a_worker_that_starts_during_an_outage_waits_for_the_store(moto: Moto) -> None:
    # Building an S3 store with create_bucket checks the bucket: a worker starting during an outage used to exit.
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            moto.start()

    moto.stop()
    store = open_retrying(lambda: _s3(moto.url), [0.1, 0.2, 0.4], sleep=sleep)
    assert waits == [0.1, 0.2]
    store.put_bytes("inputs/d", b"up", "application/octet-stream")
    assert store.get_bytes("inputs/d") == b"up"

    moto.stop()
    with pytest.raises(ObjectStoreError) as failed:
        open_retrying(lambda: _s3(moto.url), [0.05])
    assert failed.value.code == "storage_unavailable" and "open failed 2 times" in failed.value.message
    ledger.record("fault", "object-store-outage-at-worker-start", ok=True)


def test_retries_run_while_the_store_restarts_in_real_time(moto: Moto) -> None:
    backend = _s3(moto.url)
    # Generous: starting moto takes seconds on a loaded machine.
    store = RetryingObjectStore(backend, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    moto.stop()
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            store.put_bytes("outputs/c", b"late", "image/png")
        except BaseException as exc:
            errors.append(exc)

    # The upload retries in a thread while this (the parent of moto's process: it dies with the thread that
    # started it) brings the store back.
    worker = threading.Thread(target=upload)
    worker.start()
    moto.start()
    backend.ensure_bucket()
    worker.join(timeout=120)
    assert not worker.is_alive() and not errors, errors
    assert store.get_bytes("outputs/c") == b"late"


@pytest.mark.slow
def test_a_generation_rides_out_an_object_store_outage_through_the_whole_service(moto: Moto, tmp_path: Path) -> None:
    # The store goes down while a worker samples and comes back (empty: moto keeps its buckets in memory) before
    # the worker's retries run out; the job still succeeds with each output stored once.
    env = {
        "TESSERA_STORAGE__BACKEND": "s3",
        "TESSERA_STORAGE__BUCKET": "outage",
        "TESSERA_STORAGE__ENDPOINT_URL": moto.url,
        "TESSERA_STORAGE__ACCESS_KEY_ID": "test",
        "TESSERA_STORAGE__SECRET_ACCESS_KEY": "test",
        "TESSERA_STORAGE__CREATE_BUCKET": "true",
        "TESSERA_STORAGE__RETRY_DELAYS_SECONDS": "[1, 2, 4, 8, 16]",
        "OMP_NUM_THREADS": "1",
    }
    outputs = 3
    with (
        Stack(data_dir=tmp_path / "stack", preset="tiny", extra_env=env) as stack,
        TesseraClient(stack.url, stack.api_key) as client,
    ):
        body = {"prompt": "a ring", "num_inference_steps": 150, "num_outputs": outputs, "seed": 3}
        job = client.create_generation(body)
        deadline = time.monotonic() + 120
        while (job := client.get_job(job.id)).status != "running":
            assert job.status == "queued" and time.monotonic() < deadline, job
            time.sleep(0.05)
        moto.stop()
        time.sleep(2.0)
        assert client.get_job(job.id).status == "running"  # the outage overlaps the job's work
        moto.start()
        _s3(moto.url).ensure_bucket()
        final = client.wait(job.id, timeout=300)
        assert final.status == "succeeded", final.error
        images = final.generation_output.images
        assert len(images) == outputs and len({i.file_id for i in images}) == outputs
        assert all(client.download(i.url).startswith(b"\x89PNG") for i in images)
        s3 = boto3.client(
            "s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        )
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="outage").get("Contents", [])]
        assert len(keys) == outputs, keys  # no stray or doubled object
    ledger.record("fault", "object-store-outage-mid-job", ok=True, jobs=1)


@pytest.mark.slow
def test_a_training_rides_out_an_object_store_outage_during_its_input_download(moto: Moto, tmp_path: Path) -> None:
    # The store becomes unreachable (connections refused; moto behind the forwarder keeps the inputs) just before
    # a worker takes the job, so the worker's first downloads fail; it comes back within the retries.
    outage = Outage(moto.port)
    outage.up()
    env = {
        "TESSERA_STORAGE__BACKEND": "s3",
        "TESSERA_STORAGE__BUCKET": "outage",
        "TESSERA_STORAGE__ENDPOINT_URL": outage.url,
        "TESSERA_STORAGE__ACCESS_KEY_ID": "test",
        "TESSERA_STORAGE__SECRET_ACCESS_KEY": "test",
        "TESSERA_STORAGE__CREATE_BUCKET": "true",
        "TESSERA_STORAGE__RETRY_DELAYS_SECONDS": "[1, 2, 4, 8, 16]",
        "OMP_NUM_THREADS": "1",
    }
    try:
        with (
            Stack(data_dir=tmp_path / "stack", preset="tiny", extra_env=env) as stack,
            TesseraClient(stack.url, stack.api_key) as client,
        ):
            files = [client.upload_file(d).id for d in sample_images("ring", 64, 2)]
            # A worker that is still starting builds its store then, and would meet the outage there instead.
            warm = client.create_generation({"prompt": "a ring", "num_inference_steps": 1})
            assert client.wait(warm.id, timeout=300).status == "succeeded"
            outage.down()
            before = outage.connections
            job = client.create_training(
                {
                    "concept": {"name": "ring", "class_word": "ring"},
                    "images": files,
                    "options": {"max_train_steps": 3, "batch_size": 1},
                }
            )
            deadline = time.monotonic() + 120
            while (job := client.get_job(job.id)).status != "running":
                assert job.status == "queued" and time.monotonic() < deadline, job
                time.sleep(0.25)
            time.sleep(2.0)
            assert client.get_job(job.id).status == "running"  # waiting on its inputs, not failed
            outage.up()
            final = client.wait(job.id, timeout=300)
            assert final.status == "succeeded", final.error
            assert outage.connections > before  # the inputs came through the restored endpoint
            assert client.get_concept("ring").status == "ready"
    finally:
        outage.down()
    ledger.record("fault", "object-store-outage-at-input-download", ok=True, jobs=1)
