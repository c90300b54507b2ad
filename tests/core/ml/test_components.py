"""Presets on disk and loading them: the tiny preset is deterministic, idempotent and race safe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.components import PRESET_MARKER, PRESET_SUBFOLDERS, SDComponents, init_preset, preset_dir


def _weight_digests(folder: Path) -> dict[str, str]:
    # Only the base model's parts: other tests add optional parts (styling weights) to the shared folder.
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in PRESET_SUBFOLDERS
        for p in sorted((folder / sub).rglob("*"))
        if p.is_file() and p.suffix in {".safetensors", ".json", ".txt"}
    }


@pytest.mark.usefixtures("components")
def test_tiny_build_is_deterministic(models_root: Path, tmp_path: Path) -> None:
    first = models_root / "tiny"
    second = init_preset("tiny", tmp_path)
    digests = _weight_digests(first)
    assert any(name.endswith(".safetensors") for name in digests)
    assert _weight_digests(second) == digests


def test_tiny_layout_and_sizes(models_root: Path, components: SDComponents) -> None:
    folder = preset_dir("tiny", models_root)
    assert all((folder / sub).is_dir() for sub in PRESET_SUBFOLDERS)
    assert json.loads((folder / PRESET_MARKER).read_text())["preset"] == "tiny"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert components.default_resolution == 64
    assert components.vae_scale_factor == 8
    assert components.base_model_id.startswith("tiny@") and len(components.base_model_id) == len("tiny@") + 12
    assert not any(p.requires_grad for p in components.unet.parameters())


@pytest.mark.usefixtures("components")
def test_init_preset_is_idempotent(models_root: Path) -> None:
    folder = models_root / "tiny"
    stamp = (folder / PRESET_MARKER).stat().st_mtime_ns
    assert init_preset("tiny", models_root) == folder
    assert (folder / PRESET_MARKER).stat().st_mtime_ns == stamp
    assert not [p for p in models_root.iterdir() if p.name.startswith(".tiny-")]  # no staging folder left behind


def test_unfinished_tiny_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    with pytest.raises(ModelLoadError, match="not a finished tiny preset"):
        init_preset("tiny", tmp_path)


def test_missing_preset_names_folder_and_command(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        init_preset("sd15", tmp_path)
    assert str(tmp_path / "sd15" / "unet") in info.value.message
    assert "tessera models pull sd15" in info.value.message


def test_incomplete_preset_names_the_missing_subfolder(tmp_path: Path) -> None:
    for sub in PRESET_SUBFOLDERS:
        if sub != "scheduler":
            (tmp_path / "sd15" / sub).mkdir(parents=True)
    with pytest.raises(ModelLoadError, match="scheduler"):
        init_preset("sd15", tmp_path)


def test_shipped_presets_live_in_the_package(tmp_path: Path) -> None:
    assert preset_dir("shapes", tmp_path) == Path(__import__("core.ml").ml.__file__).parent / "presets" / "shapes"
    assert preset_dir("sd15", tmp_path) == tmp_path / "sd15"


def test_bad_preset_name_is_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as info:
        preset_dir("../etc", tmp_path)
    assert info.value.field == "preset"
