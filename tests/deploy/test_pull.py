"""``core.ml.pull``: the sd15 layout the loaders expect, verification and resumption, against a fake local source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.pull import MANIFESTS, PULL_RECORD, Digest, RemoteFile, manifest, pull_preset


def _content(item: RemoteFile) -> bytes:
    return f"weights of {item.origin}\n".encode()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


class FakeSource:
    """A local stand-in for the Hub: deterministic bytes per file, LFS-style sha256 for weights, blob ids else."""

    def __init__(self, corrupt: set[str] | None = None) -> None:
        self.corrupt = corrupt or set()
        self.fetched: list[str] = []
        self.resolved: list[tuple[str, str]] = []

    def resolve_revision(self, repo_id: str, revision: str) -> str:
        self.resolved.append((repo_id, revision))
        return hashlib.sha1(repo_id.encode(), usedforsecurity=False).hexdigest()

    def expected(self, item: RemoteFile, revision: str) -> Digest:
        assert item.url is not None or len(revision) == 40, "hub files are fetched at a resolved commit"
        data = _content(item)
        if item.url is not None:
            return Digest()
        if item.dest.endswith((".safetensors", ".bin", ".pth")):
            return Digest(size=len(data), sha256=hashlib.sha256(data).hexdigest())
        return Digest(size=len(data), git_blob_sha1=_blob_id(data))

    def fetch(self, item: RemoteFile, revision: str, target: Path) -> None:
        assert item.url is not None or len(revision) == 40
        self.fetched.append(item.dest)
        data = _content(item)
        if item.dest in self.corrupt:
            data = data[:-1] + b"!"
        target.write_bytes(data)


@pytest.fixture
def sam_pinned_to_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real SAM entry pins Meta's size and sha256; point it at the fake's bytes."""
    components = []
    for component in MANIFESTS["sd15"]:
        files = []
        for item in component.files:
            if item.url is not None:
                data = _content(item)
                item = RemoteFile(
                    dest=item.dest, url=item.url, size=len(data), sha256=hashlib.sha256(data).hexdigest()
                )
            files.append(item)
        components.append(type(component)(component.name, tuple(files)))
    monkeypatch.setitem(MANIFESTS, "sd15", tuple(components))


def test_sd15_manifest_has_the_layout_the_loaders_read() -> None:
    from core.ml.components import PRESET_SUBFOLDERS
    from core.ml.metrics.encoders import CLIP_FOLDER, DINO_FOLDER

    dests = {f.dest for f in manifest("sd15")}
    assert len(dests) == len(manifest("sd15")), "two files would land on the same path"
    tops = {d.split("/", 1)[0] for d in dests}
    assert set(PRESET_SUBFOLDERS) <= tops
    assert {CLIP_FOLDER, DINO_FOLDER, "sam", "ip-adapter", "controlnet"} <= tops
    assert "sam/sam_vit_h_4b8939.pth" in dests
    assert "ip-adapter/models/image_encoder/config.json" in dests  # ml-methods.md §4.5 IPA_ROOT layout
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"} <= dests
    sam = next(f for f in manifest("sd15") if f.dest.startswith("sam/"))
    assert sam.size == 2_564_550_879 and sam.sha256 is not None and len(sam.sha256) == 64


@pytest.mark.usefixtures("sam_pinned_to_fake")
def test_pull_writes_every_file_in_place_and_records_it(tmp_path: Path) -> None:
    source = FakeSource()
    folder = pull_preset("sd15", tmp_path, source=source)
    assert folder == tmp_path / "sd15"
    for item in manifest("sd15"):
        assert (folder / item.dest).read_bytes() == _content(item)
    record = json.loads((folder / PULL_RECORD).read_text())
    assert record["preset"] == "sd15"
    assert set(record["files"]) == {f.dest for f in manifest("sd15")}
    unet = record["files"]["unet/diffusion_pytorch_model.safetensors"]
    unet_item = next(f for f in manifest("sd15") if f.dest == "unet/diffusion_pytorch_model.safetensors")
    assert len(unet["revision"]) == 40 and unet["sha256"] == hashlib.sha256(_content(unet_item)).hexdigest()
    # One resolution per repository, so a preset never mixes commits of one repo.
    repos = [r for r, _ in source.resolved]
    assert len(repos) == len(set(repos))
    assert not (tmp_path / ".sd15.partial").exists()


@pytest.mark.usefixtures("sam_pinned_to_fake")
def test_a_second_pull_fetches_only_what_is_missing_or_wrong(tmp_path: Path) -> None:
    pull_preset("sd15", tmp_path, source=FakeSource())
    (tmp_path / "sd15" / "vae" / "config.json").write_text("edited\n")
    (tmp_path / "sd15" / "tokenizer" / "vocab.json").unlink()
    again = FakeSource()
    pull_preset("sd15", tmp_path, source=again)
    assert sorted(again.fetched) == ["tokenizer/vocab.json", "vae/config.json"]


@pytest.mark.usefixtures("sam_pinned_to_fake")
def test_a_corrupt_download_fails_naming_the_file_and_is_not_moved_into_place(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"unet/diffusion_pytorch_model\.safetensors.*sha256"):
        pull_preset("sd15", tmp_path, source=FakeSource(corrupt={"unet/diffusion_pytorch_model.safetensors"}))
    assert not (tmp_path / "sd15" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not (tmp_path / ".sd15.partial").exists()
    # Files verified before the failure stay; the next pull resumes after them.
    resumed = FakeSource()
    pull_preset("sd15", tmp_path, source=resumed)
    assert resumed.fetched[0] == "unet/diffusion_pytorch_model.safetensors"


def test_the_pinned_sam_digest_is_enforced(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"sam/sam_vit_h_4b8939\.pth.*size"):
        pull_preset("sd15", tmp_path, source=FakeSource(), include=["sam"])


@pytest.mark.usefixtures("sam_pinned_to_fake")
def test_include_selects_components(tmp_path: Path) -> None:
    source = FakeSource()
    pull_preset("sd15", tmp_path, source=source, include=["base", "sam"])
    assert not (tmp_path / "sd15" / "controlnet").exists()
    assert (tmp_path / "sd15" / "unet" / "config.json").is_file()
    assert (tmp_path / "sd15" / "sam" / "sam_vit_h_4b8939.pth").is_file()


def test_unknown_presets_and_components_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="models init"):
        pull_preset("tiny", tmp_path, source=FakeSource())
    with pytest.raises(InvalidRequestError, match="unknown components"):
        pull_preset("sd15", tmp_path, source=FakeSource(), include=["loras"])


def test_the_hub_source_refuses_to_run_offline() -> None:
    from huggingface_hub import constants

    from core.ml.pull import HubSource

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py sets HF_HUB_OFFLINE=1 before anything imports the hub
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=0"):
        HubSource()
