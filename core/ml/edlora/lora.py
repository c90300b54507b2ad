"""LoRA on the text encoder and UNet attention through peft, as named adapters.

Targets are Mix-of-Show's (``where: CLIPAttention`` / ``where: Attention``): q/k/v/out of every CLIP attention
layer, and ``to_q/to_k/to_v/to_out.0`` of every UNet ``attn1`` and ``attn2``. Mix-of-Show's LoRA multiplies
directly (``y = Wx + alpha·B(A(x))``); peft scales by ``lora_alpha / r``, so adapters are created with
``lora_alpha = r`` and the multiplier is set per adapter with ``set_scale`` (scaling = multiplier).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype

from core.errors import ModelLoadError

TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_config(rank: int, targets: tuple[str, ...]) -> LoraConfig:
    """A peft ``LoraConfig`` for ED-LoRA: rank ``rank``, no dropout, B zero-initialised, scaling 1 (see module doc)."""
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(targets), bias="none")


def add_lora(
    model: torch.nn.Module,
    adapter_name: str,
    *,
    rank: int,
    targets: tuple[str, ...],
    multiplier: float,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Inject a named LoRA adapter into ``model`` in place; load ``state_dict`` into it when given.

    Without ``state_dict`` the adapter is freshly initialised (A Kaiming-uniform from the global RNG, B zero) and
    its weights are upcast to float32 for training. With one, weights are created on the meta device and the given
    tensors assigned (moved to the base layer's device and dtype), so no RNG is consumed.

    Raises:
        ModelLoadError: ``state_dict`` does not fit the model (missing, unexpected or mis-shaped keys).
    """
    config = lora_config(rank, targets)
    loading = state_dict is not None
    with warnings.catch_warnings():
        # Several named adapters in one model is what we want; peft warns about it on every injection after the first.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
        inject_adapter_in_model(config, model, adapter_name=adapter_name, low_cpu_mem_usage=loading)
    if state_dict is not None:
        try:
            result = set_peft_model_state_dict(
                model, dict(state_dict), adapter_name=adapter_name, low_cpu_mem_usage=True
            )
        except RuntimeError as exc:
            raise ModelLoadError(f"adapter does not fit {type(model).__name__}: {exc}") from exc
        missing = [k for k in result.missing_keys if f".{adapter_name}." in k]
        if result.unexpected_keys or missing:
            raise ModelLoadError(
                f"adapter does not fit {type(model).__name__}: unexpected keys {result.unexpected_keys[:3]}, "
                f"missing keys {missing[:3]}"
            )
    else:
        cast_adapter_dtype(model, adapter_name, autocast_adapter_dtype=True)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(adapter_name, multiplier)


def lora_state_dict(model: torch.nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft naming without the adapter name (``...q_proj.lora_A.weight``), detached on CPU."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def lora_parameters(model: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    """The trainable tensors (``lora_A``/``lora_B`` weights) of one adapter."""
    return [p for n, p in model.named_parameters() if "lora_" in n and f".{adapter_name}." in n]


def activate_lora(model: torch.nn.Module, adapter_name: str | None, multiplier: float = 1.0) -> None:
    """Make ``adapter_name`` the only active adapter with scaling ``multiplier``; ``None`` disables all adapters."""
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if adapter_name is None:
            module.enable_adapters(False)
            continue
        module.enable_adapters(True)
        module.set_adapter(adapter_name, inference_mode=True)
        if isinstance(module, LoraLayer):
            module.set_scale(adapter_name, multiplier)


def remove_lora(model: torch.nn.Module) -> None:
    """Put every original layer back in place of its peft wrapper and drop peft's bookkeeping attribute.

    The base layers are the original module objects with their original (never merged) weights.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config


@contextmanager
def lora_scope(*models: torch.nn.Module) -> Iterator[None]:
    """Adapters added to ``models`` within the block are removed afterwards, and ``requires_grad`` restored."""
    flags = [{n: p.requires_grad for n, p in m.named_parameters()} for m in models]
    try:
        yield
    finally:
        for model, model_flags in zip(models, flags, strict=True):
            remove_lora(model)
            for n, p in model.named_parameters():
                p.requires_grad_(model_flags.get(n, p.requires_grad))
