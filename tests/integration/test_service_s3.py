"""The same path with the S3 backend: the API and the worker store inputs, adapters and outputs in a real
S3 endpoint (moto's server over HTTP, standing in for MinIO), and clients download over presigned URLs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tessera_client import TesseraClient

from services.demo import sample_images
from services.embedded import Stack
from services.processes import Child, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = Child(
        "moto", [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url, timeout=2).status_code < 500, what="moto server", child=server)
        yield url
    finally:
        server.stop()


def test_train_and_generate_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    # The service talks to 127.0.0.1; URLs are signed for the address a browser would use.
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    env = {
        "TESSERA_STORAGE__BACKEND": "s3",
        "TESSERA_STORAGE__BUCKET": "tessera-e2e",
        "TESSERA_STORAGE__ENDPOINT_URL": s3_endpoint,
        "TESSERA_STORAGE__PUBLIC_ENDPOINT_URL": public,
        "TESSERA_STORAGE__ACCESS_KEY_ID": "test",
        "TESSERA_STORAGE__SECRET_ACCESS_KEY": "test",
        "TESSERA_STORAGE__CREATE_BUCKET": "true",
        "OMP_NUM_THREADS": "1",
    }
    with (
        Stack(data_dir=tmp_path, preset="tiny", extra_env=env) as stack,
        TesseraClient(stack.url, stack.api_key) as client,
    ):
        files = [client.upload_file(d).id for d in sample_images("ring", 64, 2)]
        assert str(client.get_file(files[0]).url).startswith(public + "/tessera-e2e/")
        job = client.create_training(
            {
                "concept": {"name": "ring", "class_word": "ring"},
                "images": files,
                "options": {"max_train_steps": 3, "batch_size": 1},
            }
        )
        assert client.wait(job.id, timeout=300).status == "succeeded"
        adapter_url = client.get_concept("ring").adapter.url  # type: ignore[union-attr]
        adapter = client.download(adapter_url)  # the adapter is in the bucket, as a safetensors file
        header_length = int.from_bytes(adapter[:8], "little")
        header = json.loads(adapter[8 : 8 + header_length])
        assert header["__metadata__"]["format"] == "tessera.edlora"
        final = client.wait(
            client.create_generation(
                {"prompt": "a <ring>", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 5}
            ).id,
            timeout=300,
        )
        assert final.status == "succeeded", final.error
        url = str(final.generation_output.images[0].url)
        assert url.startswith(public) and client.download(url).startswith(b"\x89PNG")
        # Nothing was written to the local object directory.
        assert not (tmp_path / "objects").exists()
