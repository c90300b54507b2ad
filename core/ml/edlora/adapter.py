"""The ED-LoRA adapter file: one safetensors file per concept, with a JSON-string metadata header. Never a pickle.

Tensor keys:

- ``token_embeddings``: ``[2, n_layers, hidden]``, the concept's two words x one row per UNet cross-attention layer.
- ``text_encoder.<peft key>``: LoRA of the CLIP attention projections, peft naming with the adapter name stripped,
  e.g. ``text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight`` (``[r, in]``); ``lora_B``
  is ``[out, r]``.
- ``unet.<peft key>``: LoRA of ``to_q/to_k/to_v/to_out.0`` of every ``attn1``/``attn2``, same naming.

``__metadata__`` (all strings): ``format``, ``format_version``, ``base_model``, ``rank``, ``alpha``,
``num_layer_embeddings``, ``concept_name``, ``class_word``, ``training_options`` (JSON).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from core.errors import ModelLoadError

ADAPTER_FORMAT = "tessera.edlora"
ADAPTER_FORMAT_VERSION = "1"

_EMBEDDINGS_KEY = "token_embeddings"
_TEXT_ENCODER_PREFIX = "text_encoder."
_UNET_PREFIX = "unet."
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


OtherTermState = Literal["active", "no_other_objects", "off"]
"""The separation loss's other-objects term in a training: ``off`` (no separation loss, or no weight on the term),
``no_other_objects`` (on, but no example had other objects, so the term was identically 0) or ``active``."""


@dataclass(frozen=True)
class TrainingReport:
    """What one ED-LoRA training saw, as the job reports it.

    Args:
        attention_in_mask: mean share of the concept words' cross-attention inside the concept mask, per attention
            grid side (as a string), over the steps that captured it (empty without the separation loss).
        attention_on_other_objects: the same share on other objects' masks.
        examples_with_other_objects: training images whose other-objects mask marks anything.
        separation_other_term: the state of the separation loss's other-objects term.
        loss_curve: ``(step, loss)`` points of the training loss, at most ``LOSS_CURVE_POINTS`` (see ``loss_curve``).
    """

    attention_in_mask: dict[str, float]
    attention_on_other_objects: dict[str, float]
    examples_with_other_objects: int
    separation_other_term: OtherTermState
    loss_curve: tuple[tuple[int, float], ...] = ()


LOSS_CURVE_POINTS = 100
"""A training's loss curve keeps at most this many points: enough to draw, small in a job's output."""


def loss_curve(losses: list[float], points: int = LOSS_CURVE_POINTS) -> tuple[tuple[int, float], ...]:
    """The per-step losses (step 1 first) as at most ``points`` ``(step, loss)`` pairs: each the mean over a run of
    consecutive steps, placed at the run's last step (a single step's loss is noise: the timestep is random)."""
    if not losses:
        return ()
    size = -(-len(losses) // points)  # ceil: runs of equal length, the last one shorter
    curve = []
    for start in range(0, len(losses), size):
        run = losses[start : start + size]
        curve.append((start + len(run), round(sum(run) / len(run), 6)))
    return tuple(curve)


@dataclass
class EDLoRAWeights:
    """Everything learned for one concept, plus what is needed to apply it to the right base model.

    Args:
        concept_name: how prompts refer to the concept (``<concept_name>``).
        class_word: the plain word for the concept's class ("dog"); the base path of fusion uses it.
        token_embeddings: ``[2, n_layers, hidden]`` float tensor: word 1 (``V_rand``) and word 2 (``V_class``),
            one row per UNet cross-attention layer in down → mid → up order.
        text_encoder_lora: peft LoRA state dict of the text encoder (``lora_A`` ``[r, in]``, ``lora_B`` ``[out, r]``).
        unet_lora: peft LoRA state dict of the UNet, same naming.
        rank: LoRA rank r.
        alpha: LoRA multiplier used in training (direct, Mix-of-Show style: delta = alpha·B·A).
        base_model_id: ``SDComponents.base_model_id`` of the model it was trained on.
        training_options: the ``EDLoRAConfig`` (as JSON-able dict) and run facts, for provenance.
        report: what the training that made these weights saw (``train_edlora`` sets it; None for weights read from
            a file, whose ``training_options`` hold the same facts).
    """

    concept_name: str
    class_word: str
    token_embeddings: torch.Tensor
    text_encoder_lora: dict[str, torch.Tensor]
    unet_lora: dict[str, torch.Tensor]
    rank: int
    alpha: float
    base_model_id: str
    training_options: dict[str, Any] = field(default_factory=dict)
    report: TrainingReport | None = None

    @property
    def num_layers(self) -> int:
        """Number of layer-wise embeddings per word (16 for SD 1.5)."""
        return int(self.token_embeddings.shape[1])


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    # safetensors refuses shared or strided storage; a detached CPU clone is always serialisable.
    return tensor.detach().to("cpu").clone().contiguous()


def adapter_to_bytes(weights: EDLoRAWeights) -> bytes:
    """Serialise an adapter to safetensors bytes (see the module docstring for keys and metadata)."""
    tensors = {_EMBEDDINGS_KEY: _plain(weights.token_embeddings)}
    tensors.update({_TEXT_ENCODER_PREFIX + k: _plain(v) for k, v in weights.text_encoder_lora.items()})
    tensors.update({_UNET_PREFIX + k: _plain(v) for k, v in weights.unet_lora.items()})
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_FORMAT_VERSION,
        "base_model": weights.base_model_id,
        "rank": str(weights.rank),
        "alpha": repr(float(weights.alpha)),
        "num_layer_embeddings": str(weights.num_layers),
        "concept_name": weights.concept_name,
        "class_word": weights.class_word,
        "training_options": json.dumps(weights.training_options, sort_keys=True),
    }
    return _canonical(st_save(tensors, metadata=metadata))


def _canonical(data: bytes) -> bytes:
    """The same file with its JSON header keys sorted.

    safetensors writes ``__metadata__`` from a hash map, so its key order (and the file's sha256) changes from
    run to run; sorting makes equal adapters byte-identical. Tensor data and offsets are untouched.
    """
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header with spaces to an 8-byte boundary
    return struct.pack("<Q", len(text)) + text + data[8 + header_len :]


def read_adapter_metadata(data: bytes) -> dict[str, str]:
    """Read the ``__metadata__`` of safetensors bytes without loading tensors.

    Raises:
        ModelLoadError: not a safetensors header, or no metadata.
    """
    if len(data) < 8:
        raise ModelLoadError(f"adapter is not a safetensors file: {len(data)} bytes is shorter than its header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise ModelLoadError(f"adapter is not a safetensors file: header length {header_len} is out of range")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"adapter is not a safetensors file: header is not JSON ({exc})") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelLoadError("adapter has no string __metadata__ header; not a tessera.edlora file")
    return {str(k): v for k, v in metadata.items()}


def _require(metadata: dict[str, str], key: str) -> str:
    if key not in metadata:
        raise ModelLoadError(f"adapter metadata lacks {key!r}")
    return metadata[key]


def adapter_from_bytes(data: bytes) -> EDLoRAWeights:
    """Parse safetensors bytes written by ``adapter_to_bytes``.

    Raises:
        ModelLoadError: malformed bytes, another format or version, missing metadata, or tensors whose keys or
            shapes do not match the metadata.
    """
    metadata = read_adapter_metadata(data)
    fmt, version = metadata.get("format"), metadata.get("format_version")
    if fmt != ADAPTER_FORMAT or version != ADAPTER_FORMAT_VERSION:
        raise ModelLoadError(
            f"adapter format must be {ADAPTER_FORMAT} v{ADAPTER_FORMAT_VERSION}, got {fmt!r} v{version!r}"
        )
    try:
        rank = int(_require(metadata, "rank"))
        alpha = float(_require(metadata, "alpha"))
        num_layers = int(_require(metadata, "num_layer_embeddings"))
        options = json.loads(_require(metadata, "training_options"))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"adapter metadata is malformed: {exc}") from exc
    if rank < 1 or num_layers < 1 or not isinstance(options, dict):
        raise ModelLoadError(f"adapter metadata is out of range: rank={rank}, num_layer_embeddings={num_layers}")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (not exported as a stable type)
        raise ModelLoadError(f"adapter tensors are unreadable: {exc}") from exc

    embeddings = tensors.pop(_EMBEDDINGS_KEY, None)
    if embeddings is None or embeddings.ndim != 3 or embeddings.shape[0] != 2 or embeddings.shape[1] != num_layers:
        shape = None if embeddings is None else tuple(embeddings.shape)
        raise ModelLoadError(f"adapter token_embeddings must be [2, {num_layers}, hidden], got {shape}")
    text_encoder_lora: dict[str, torch.Tensor] = {}
    unet_lora: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise ModelLoadError(f"adapter holds an unexpected tensor {key!r}")
        if key.startswith(_TEXT_ENCODER_PREFIX):
            text_encoder_lora[key.removeprefix(_TEXT_ENCODER_PREFIX)] = tensor
        elif key.startswith(_UNET_PREFIX):
            unet_lora[key.removeprefix(_UNET_PREFIX)] = tensor
        else:
            raise ModelLoadError(f"adapter holds an unexpected tensor {key!r}")
    return EDLoRAWeights(
        concept_name=_require(metadata, "concept_name"),
        class_word=_require(metadata, "class_word"),
        token_embeddings=embeddings,
        text_encoder_lora=text_encoder_lora,
        unet_lora=unet_lora,
        rank=rank,
        alpha=alpha,
        base_model_id=_require(metadata, "base_model"),
        training_options=options,
    )


def save_adapter(weights: EDLoRAWeights, path: Path) -> None:
    """Write an adapter file (atomically: a temporary sibling, then a rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(adapter_to_bytes(weights))
    tmp.replace(path)


def load_adapter(path: Path) -> EDLoRAWeights:
    """Read an adapter file.

    Raises:
        ModelLoadError: the file is missing, unreadable or not a valid adapter.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read adapter {path}: {exc}") from exc
    return adapter_from_bytes(data)
