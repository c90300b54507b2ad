"""Importing Mix-of-Show ``.pth`` ED-LoRA files: the layout maps onto ours, and pickled code is refused."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from core.errors import ModelLoadError
from core.ml.edlora.adapter import EDLoRAWeights, adapter_from_bytes, adapter_to_bytes
from core.ml.edlora.mixofshow import load_mixofshow_edlora


def _mixofshow_layout(weights: EDLoRAWeights) -> dict[str, object]:
    def renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.replace(".lora_A.", ".lora_down.").replace(".lora_B.", ".lora_up."): v for k, v in state.items()}

    return {
        "params": {
            "new_concept_embedding": {
                "<corgi1>": weights.token_embeddings[0],
                "<corgi2>": weights.token_embeddings[1],
            },
            "text_encoder": renamed(weights.text_encoder_lora),
            "unet": renamed(weights.unet_lora),
        }
    }


def test_a_mixofshow_file_imports_as_the_same_weights(corgi: EDLoRAWeights, tmp_path: Path) -> None:
    path = tmp_path / "edlora_model-latest.pth"
    torch.save(_mixofshow_layout(corgi), path)
    imported = load_mixofshow_edlora(path, class_word="dog", base_model_id=corgi.base_model_id)
    assert imported.concept_name == "corgi" and imported.rank == corgi.rank
    assert torch.equal(imported.token_embeddings, corgi.token_embeddings)
    assert imported.unet_lora.keys() == corgi.unet_lora.keys()
    assert all(torch.equal(imported.unet_lora[k], v) for k, v in corgi.unet_lora.items())
    assert all(torch.equal(imported.text_encoder_lora[k], v) for k, v in corgi.text_encoder_lora.items())
    again = adapter_from_bytes(adapter_to_bytes(imported))
    assert torch.equal(again.token_embeddings, corgi.token_embeddings)


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"params": {"new_concept_embedding": _Payload()}}, path)
    with pytest.raises(ModelLoadError, match="plain tensors"):
        load_mixofshow_edlora(path, class_word="dog", base_model_id="x")


def test_other_layouts_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(collections.OrderedDict(weight=torch.zeros(2)), path)
    with pytest.raises(ModelLoadError, match="not a Mix-of-Show"):
        load_mixofshow_edlora(path, class_word="dog", base_model_id="x")
