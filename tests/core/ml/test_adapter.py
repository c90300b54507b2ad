"""The adapter file: safetensors with a metadata header, exact round trip, clear errors on bad bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from core.errors import ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import (
    ADAPTER_FORMAT,
    ADAPTER_FORMAT_VERSION,
    EDLoRAWeights,
    adapter_from_bytes,
    adapter_to_bytes,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)


def _assert_equal(a: EDLoRAWeights, b: EDLoRAWeights) -> None:
    assert (a.concept_name, a.class_word, a.rank, a.alpha, a.base_model_id) == (
        b.concept_name,
        b.class_word,
        b.rank,
        b.alpha,
        b.base_model_id,
    )
    assert a.training_options == b.training_options
    assert torch.equal(a.token_embeddings, b.token_embeddings)
    for left, right in ((a.text_encoder_lora, b.text_encoder_lora), (a.unet_lora, b.unet_lora)):
        assert left.keys() == right.keys()
        assert all(torch.equal(left[k], right[k]) for k in left)


def test_round_trip_is_exact(corgi: EDLoRAWeights, tmp_path: Path) -> None:
    data = adapter_to_bytes(corgi)
    _assert_equal(adapter_from_bytes(data), corgi)
    save_adapter(corgi, tmp_path / "corgi.safetensors")
    _assert_equal(load_adapter(tmp_path / "corgi.safetensors"), corgi)


def test_file_is_safetensors_with_metadata(corgi: EDLoRAWeights, components: SDComponents) -> None:
    data = adapter_to_bytes(corgi)
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])  # a JSON header, not a pickle
    metadata = header.pop("__metadata__")
    assert metadata == read_adapter_metadata(data)
    assert metadata["format"] == ADAPTER_FORMAT and metadata["format_version"] == ADAPTER_FORMAT_VERSION
    assert metadata["base_model"] == components.base_model_id
    assert (metadata["rank"], metadata["alpha"], metadata["num_layer_embeddings"]) == ("4", "1.0", "4")
    assert (metadata["concept_name"], metadata["class_word"]) == ("corgi", "dog")
    assert json.loads(metadata["training_options"])["max_train_steps"] == 2
    assert header["token_embeddings"]["shape"] == [2, 4, 32]
    lora_keys = [k for k in header if k != "token_embeddings"]
    assert lora_keys and all(".lora_A." in k or ".lora_B." in k for k in lora_keys)
    assert all(k.startswith(("text_encoder.", "unet.")) for k in lora_keys)


def _safetensors(metadata: dict[str, str] | None, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    data: bytes = st_save(tensors or {"token_embeddings": torch.zeros(2, 4, 32)}, metadata=metadata)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than its header"),
        (b"not a safetensors file at all", "out of range"),
        (struct.pack("<Q", 5) + b"{nope", "not JSON"),
        (_safetensors(None), "no string __metadata__"),
        (_safetensors({"format": "kohya.lora", "format_version": "1"}), "format must be"),
        (_safetensors({"format": ADAPTER_FORMAT, "format_version": "2"}), "format must be"),
        (_safetensors({"format": ADAPTER_FORMAT, "format_version": "1"}), "lacks 'rank'"),
    ],
)
def test_malformed_bytes_raise_model_load_error(data: bytes, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        adapter_from_bytes(data)


def test_truncated_and_inconsistent_files_raise_model_load_error(corgi: EDLoRAWeights) -> None:
    data = adapter_to_bytes(corgi)
    with pytest.raises(ModelLoadError):
        adapter_from_bytes(data[: len(data) // 2])
    metadata = read_adapter_metadata(data)
    with pytest.raises(ModelLoadError, match="token_embeddings"):
        adapter_from_bytes(_safetensors({**metadata, "num_layer_embeddings": "16"}))
    with pytest.raises(ModelLoadError, match="unexpected tensor"):
        adapter_from_bytes(_safetensors(metadata, {"token_embeddings": torch.zeros(2, 4, 32), "evil": torch.ones(1)}))


def test_missing_file_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read adapter"):
        load_adapter(tmp_path / "absent.safetensors")
