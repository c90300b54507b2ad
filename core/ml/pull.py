"""Fetch a model preset's real weights into the folder layout the loaders expect (``tessera models pull``).

The only place in the project that downloads weights; it runs on the operator's request (or in a one-off
Kubernetes Job), never inside the service. Everything else loads with ``local_files_only=True``.

Layout written for ``sd15`` under ``<dest>/sd15/`` (what ``core.ml.components``, the metrics encoders and the
styling/mask stages read)::

    model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/   Stable Diffusion 1.5 (diffusers, fp32)
    sam/sam_vit_h_4b8939.pth                                                Segment Anything ViT-H
    ip-adapter/models/ip-adapter_sd15.safetensors, ip-adapter/models/image_encoder/   h94/IP-Adapter subset
    controlnet/{canny,softedge,depth}/                                      ControlNet 1.1 (diffusers)
    clip-vit-b32/, dino-vits16/                                             evaluation encoders
    tessera_pull.json                                                       what was fetched: commits, sizes, sha256

Every file is checked before it is moved into place: its size, and its sha256 when the manifest or the source
publishes one (the Hub does for LFS files; small git files are checked by their git blob id). A file already in
place with the expected size and digest is not downloaded again, so an interrupted pull resumes file by file.
Downloads land in ``<dest>/.<preset>.partial/`` (same filesystem) and are renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.errors import InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)

PULL_RECORD = "tessera_pull.json"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class RemoteFile:
    """One file of a preset: where it comes from and where it goes (``dest``, relative to the preset folder).

    Either ``repo_id`` + ``filename`` (a Hugging Face Hub repository at ``revision``) or ``url`` (a plain HTTPS
    download). ``size``/``sha256`` pin the content when known in advance; else the source's metadata is used.
    """

    dest: str
    repo_id: str | None = None
    filename: str | None = None
    revision: str = "main"
    url: str | None = None
    size: int | None = None
    sha256: str | None = None

    @property
    def origin(self) -> str:
        return self.url if self.url is not None else f"{self.repo_id}/{self.filename}"


@dataclass(frozen=True)
class Digest:
    """What a source says a file is: its size and whichever hashes it publishes."""

    size: int | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None


class WeightSource(Protocol):
    """Where weights come from. ``HubSource`` talks to the Hugging Face Hub; tests pass a local fake."""

    def resolve_revision(self, repo_id: str, revision: str) -> str:
        """The commit a branch or tag points at now (a commit is returned unchanged)."""
        ...

    def expected(self, item: RemoteFile, revision: str) -> Digest:
        """The size and hashes the source publishes for ``item`` at ``revision`` (empty ``Digest`` if none)."""
        ...

    def fetch(self, item: RemoteFile, revision: str, target: Path) -> None:
        """Write ``item``'s bytes to ``target`` (its parent exists)."""
        ...


@dataclass(frozen=True)
class Component:
    """A named group of files; ``pull_preset(include=...)`` selects groups by name."""

    name: str
    files: tuple[RemoteFile, ...]


def _repo(repo_id: str, dest: str, files: Iterable[str], *, prefix: str = "") -> tuple[RemoteFile, ...]:
    """``files`` of a Hub repository, each written to ``dest/<path without prefix>``."""
    out = []
    for name in files:
        relative = name.removeprefix(prefix)
        out.append(RemoteFile(dest=f"{dest}/{relative}".lstrip("/"), repo_id=repo_id, filename=name))
    return tuple(out)


_SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")

MANIFESTS: dict[str, tuple[Component, ...]] = {
    "sd15": (
        Component(
            "base",
            _repo(
                _SD15_REPO,
                "",
                (
                    "model_index.json",
                    "scheduler/scheduler_config.json",
                    "text_encoder/config.json",
                    "text_encoder/model.safetensors",
                    "tokenizer/merges.txt",
                    "tokenizer/special_tokens_map.json",
                    "tokenizer/tokenizer_config.json",
                    "tokenizer/vocab.json",
                    "unet/config.json",
                    "unet/diffusion_pytorch_model.safetensors",
                    "vae/config.json",
                    "vae/diffusion_pytorch_model.safetensors",
                ),
            ),
        ),
        Component(
            "sam",
            (
                RemoteFile(
                    dest="sam/sam_vit_h_4b8939.pth",
                    url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
                    size=2_564_550_879,
                    sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                ),
            ),
        ),
        Component(
            "ip-adapter",
            _repo(
                "h94/IP-Adapter",
                "ip-adapter",
                (
                    "models/ip-adapter_sd15.safetensors",
                    "models/image_encoder/config.json",
                    "models/image_encoder/model.safetensors",
                ),
            ),
        ),
        Component(
            "controlnet",
            _repo("lllyasviel/control_v11p_sd15_canny", "controlnet/canny", _CONTROLNET_FILES)
            + _repo("lllyasviel/control_v11p_sd15_softedge", "controlnet/softedge", _CONTROLNET_FILES)
            + _repo("lllyasviel/control_v11f1p_sd15_depth", "controlnet/depth", _CONTROLNET_FILES),
        ),
        Component(
            "eval",
            _repo(
                "openai/clip-vit-base-patch32",
                "clip-vit-b32",
                (
                    "config.json",
                    "pytorch_model.bin",
                    "merges.txt",
                    "vocab.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "special_tokens_map.json",
                    "preprocessor_config.json",
                ),
            )
            + _repo(
                "facebook/dino-vits16", "dino-vits16", ("config.json", "pytorch_model.bin", "preprocessor_config.json")
            ),
        ),
    ),
}


def manifest(preset: str, include: Collection[str] | None = None) -> list[RemoteFile]:
    """The files of ``preset`` (only the components named in ``include`` when given).

    Raises:
        InvalidRequestError: the preset cannot be pulled, or ``include`` names an unknown component.
    """
    if preset not in MANIFESTS:
        hint = " (tiny is built locally: `tessera models init --preset tiny`)" if preset == "tiny" else ""
        raise InvalidRequestError(
            f"preset {preset!r} cannot be pulled; pullable presets: {sorted(MANIFESTS)}{hint}",
            field="preset",
            code="invalid_preset",
        )
    components = MANIFESTS[preset]
    if include is not None:
        unknown = sorted(set(include) - {c.name for c in components})
        if unknown:
            raise InvalidRequestError(
                f"unknown components {unknown} for preset {preset!r}; known: {[c.name for c in components]}",
                field="include",
                code="invalid_component",
            )
    return [f for c in components if include is None or c.name in include for f in c.files]


def _hash_file(path: Path) -> tuple[str, str]:
    """``(sha256, git blob sha1)`` of a file, in one read."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest()


def _mismatch(path: Path, want: Digest) -> str | None:
    """Why ``path`` is not the file ``want`` describes, or None when it is."""
    size = path.stat().st_size
    if want.size is not None and size != want.size:
        return f"size {size} bytes, expected {want.size}"
    if want.sha256 is None and want.git_blob_sha1 is None:
        return None
    sha256, blob = _hash_file(path)
    if want.sha256 is not None and sha256 != want.sha256.lower():
        return f"sha256 {sha256}, expected {want.sha256}"
    if want.git_blob_sha1 is not None and blob != want.git_blob_sha1.lower():
        return f"git blob id {blob}, expected {want.git_blob_sha1}"
    return None


def _safe_relative(dest: str) -> Path:
    relative = Path(dest)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(f"manifest destination must be a relative path inside the preset folder, got {dest!r}")
    return relative


def pull_preset(
    preset: str,
    dest: Path,
    *,
    source: WeightSource,
    include: Collection[str] | None = None,
) -> Path:
    """Download ``preset``'s files into ``dest/<preset>/`` in the loaders' layout, verified; return that folder.

    ``dest`` is the models root (``TESSERA_MODELS__ROOT``). Hub revisions are resolved to commits once per
    repository, so every file of a repository comes from the same commit; the commits, sizes and sha256 of what
    was written are recorded in ``<dest>/<preset>/tessera_pull.json``.

    Raises:
        InvalidRequestError: ``preset`` or ``include`` is unknown.
        ModelLoadError: a downloaded file does not match its expected size or hash (it is deleted, nothing of it
            is moved into place), or the source failed.
    """
    files = manifest(preset, include)
    folder = Path(dest) / preset
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(dest) / f".{preset}.partial"
    staging.mkdir(exist_ok=True)
    commits: dict[str, str] = {}
    record_path = folder / PULL_RECORD
    previous = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    recorded: dict[str, dict[str, object]] = dict(previous.get("files", {}))
    try:
        for item in files:
            relative = _safe_relative(item.dest)
            revision = item.revision
            if item.repo_id is not None:
                if item.repo_id not in commits:
                    commits[item.repo_id] = source.resolve_revision(item.repo_id, item.revision)
                revision = commits[item.repo_id]
            published = source.expected(item, revision)
            want = Digest(
                size=item.size if item.size is not None else published.size,
                sha256=item.sha256 or published.sha256,
                git_blob_sha1=None if (item.sha256 or published.sha256) else published.git_blob_sha1,
            )
            target = folder / relative
            if target.is_file() and _mismatch(target, want) is None:
                logger.info("%s: already in place", relative)
            else:
                partial = staging / relative
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.unlink(missing_ok=True)
                logger.info("%s: fetching %s@%s", relative, item.origin, revision)
                try:
                    source.fetch(item, revision, partial)
                except ModelLoadError:
                    raise
                except Exception as exc:
                    raise ModelLoadError(f"could not fetch {item.origin}@{revision} for {relative}: {exc}") from exc
                problem = _mismatch(partial, want)
                if problem is not None:
                    partial.unlink(missing_ok=True)
                    raise ModelLoadError(f"{item.origin}@{revision} for {relative} is corrupt: {problem}")
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(partial, target)
            sha256, _ = _hash_file(target) if want.sha256 is None else (want.sha256.lower(), "")
            recorded[relative.as_posix()] = {
                "origin": item.origin,
                "revision": revision,
                "size": target.stat().st_size,
                "sha256": sha256,
            }
            _write_record(record_path, preset, recorded)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_record(path: Path, preset: str, files: dict[str, dict[str, object]]) -> None:
    body = json.dumps({"preset": preset, "files": dict(sorted(files.items()))}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".pull-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class HubSource:
    """Weights from the Hugging Face Hub (``hf_hub_download``) and plain HTTPS URLs (``httpx``).

    Needs the internet: unset ``HF_HUB_OFFLINE`` (the service images set it to 1) before running a pull.
    ``token`` is only needed for gated repositories.
    """

    def __init__(self, token: str | None = None) -> None:
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError("HF_HUB_OFFLINE is set; a pull needs the Hub: run it with HF_HUB_OFFLINE=0")
        self._api = HfApi(token=token)
        self._token = token

    def resolve_revision(self, repo_id: str, revision: str) -> str:
        sha = self._api.model_info(repo_id, revision=revision).sha
        return sha if sha is not None else revision

    def expected(self, item: RemoteFile, revision: str) -> Digest:
        if item.repo_id is None or item.filename is None:
            return Digest()
        from huggingface_hub.hf_api import RepoFile

        for entry in self._api.get_paths_info(item.repo_id, [item.filename], revision=revision):
            if isinstance(entry, RepoFile) and entry.path == item.filename:
                if entry.lfs is not None:
                    return Digest(size=entry.lfs.size, sha256=entry.lfs.sha256)
                return Digest(size=entry.size, git_blob_sha1=entry.blob_id)
        raise ModelLoadError(f"{item.repo_id}@{revision} has no file {item.filename}")

    def fetch(self, item: RemoteFile, revision: str, target: Path) -> None:
        if item.url is not None:
            import httpx

            with httpx.stream("GET", item.url, follow_redirects=True, timeout=60.0) as response:
                response.raise_for_status()
                with target.open("wb") as fh:
                    for chunk in response.iter_bytes(_CHUNK):
                        fh.write(chunk)
            return
        if item.repo_id is None or item.filename is None:
            raise ValueError(f"manifest entry {item.dest!r} has neither url nor repo_id + filename")
        from huggingface_hub import hf_hub_download

        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            path = hf_hub_download(
                item.repo_id, item.filename, revision=revision, local_dir=scratch, token=self._token
            )
            os.replace(str(path), target)
