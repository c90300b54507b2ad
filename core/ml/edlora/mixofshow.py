"""Importing Mix-of-Show ED-LoRA files (``edlora_model-latest.pth``) as ``EDLoRAWeights``.

The file (ml-methods §1.7) is a pickle of ``{"params": {...}}`` (Concept Conductor also writes the inner dict):

- ``new_concept_embedding``: ``{"<word1>": [n_layers, hidden], "<word2>": [n_layers, hidden]}``;
- ``text_encoder``: ``"text_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj.lora_{down,up}.weight"``;
- ``unet``: ``"<block>.transformer_blocks.0.attn{1,2}.{to_q,to_k,to_v,to_out.0}.lora_{down,up}.weight"``.

It is read with ``torch.load(weights_only=True)``: tensors, dicts and strings only, so a file that carries code is
refused instead of run. ``lora_down``/``lora_up`` map to peft's ``lora_A``/``lora_B``; Mix-of-Show's alpha is not
stored in the file, so the caller gives it (1.0 is what training used; 0.7 is what Mix-of-Show samples with).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelLoadError
from core.ml.edlora.adapter import EDLoRAWeights

_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>down|up)\.weight$")


def _lora(params: Any, part: str) -> dict[str, torch.Tensor]:
    section = params.get(part, {})
    if not isinstance(section, dict):
        raise ModelLoadError(f"Mix-of-Show file: params.{part} must be a dict, got {type(section).__name__}")
    result = {}
    for key, tensor in section.items():
        match = _LORA_KEY.match(str(key))
        if match is None or not isinstance(tensor, torch.Tensor):
            raise ModelLoadError(f"Mix-of-Show file: unexpected entry params.{part}[{key!r}]")
        peft_kind = "lora_A" if match["kind"] == "down" else "lora_B"
        result[f"{match['module']}.{peft_kind}.weight"] = tensor.float().contiguous()
    return result


def load_mixofshow_edlora(
    path: Path,
    *,
    class_word: str,
    base_model_id: str,
    concept_name: str | None = None,
    alpha: float = 1.0,
) -> EDLoRAWeights:
    """Read a Mix-of-Show ED-LoRA ``.pth`` file.

    Args:
        class_word: the concept's class word (the file does not store it).
        base_model_id: ``SDComponents.base_model_id`` of the model it was trained for (the file does not say).
        concept_name: defaults to the first concept word without ``<>`` and trailing digits (``<potter1>`` → potter).
        alpha: the LoRA multiplier to record.

    Returns:
        weights with ``token_embeddings`` ``[2, n_layers, hidden]`` (word order as in the file) and peft-named LoRA.

    Raises:
        ModelLoadError: unreadable file, pickled code, or not the Mix-of-Show layout.
    """
    try:
        raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"cannot read Mix-of-Show file {path} as plain tensors: {exc}") from exc
    params = raw.get("params", raw) if isinstance(raw, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("new_concept_embedding"), dict):
        raise ModelLoadError(f"{path} is not a Mix-of-Show ED-LoRA file (no params.new_concept_embedding)")
    words = params["new_concept_embedding"]
    if len(words) != 2 or not all(isinstance(v, torch.Tensor) and v.ndim == 2 for v in words.values()):
        raise ModelLoadError(f"Mix-of-Show file {path}: expected 2 concept words of [n_layers, hidden] embeddings")
    names = list(words)
    embeddings = torch.stack([words[n].float() for n in names])
    text_encoder_lora, unet_lora = _lora(params, "text_encoder"), _lora(params, "unet")
    ranks = {t.shape[0] for k, t in {**text_encoder_lora, **unet_lora}.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ModelLoadError(f"Mix-of-Show file {path}: expected one LoRA rank, found {sorted(ranks)}")
    name = concept_name or re.sub(r"[^a-z0-9_-]|\d+$", "", names[0].strip("<>").lower()) or "concept"
    return EDLoRAWeights(
        concept_name=name,
        class_word=class_word,
        token_embeddings=embeddings,
        text_encoder_lora=text_encoder_lora,
        unet_lora=unet_lora,
        rank=ranks.pop(),
        alpha=alpha,
        base_model_id=base_model_id,
        training_options={"imported_from": "mixofshow", "concept_words": names},
    )
