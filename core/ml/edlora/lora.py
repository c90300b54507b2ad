"""LoRA on the text encoder and UNet attention through peft, as named adapters.

Targets are Mix-of-Show's (``where: CLIPAttention`` / ``where: Attention``): q/k/v/out of every CLIP attention
layer, and ``to_q/to_k/to_v/to_out.0`` of every UNet ``attn1`` and ``attn2``. Mix-of-Show's LoRA multiplies
directly (``y = Wx + alpha·B(A(x))``); peft scales by ``lora_alpha / r``, so adapters are created with
``lora_alpha = r`` and the multiplier is set per adapter with ``set_scale`` (scaling = multiplier).

Attaching a trained adapter to the resident models is what every generation job does, once per concept, and peft's
injection builds a wrapper layer per target (176 on SD 1.5) after walking the whole model several times: 0.2-0.3 s
of host-side Python per concept on a 2-core CPU, which a GPU does not shorten. So the wrappers a load leaves behind
are kept (per model and target set, by ``remove_lora``, detached from the model and with their adapter slots set
aside) and the next load of an adapter of the same name and rank puts them back and assigns the new weights: about
9x faster (``bench/cold_start.py`` measures both). The kept slots hold the last adapters' tensors (a few MB).
Between jobs the models hold no peft layers, as before; ``fresh_lora_layers()`` turns the reuse off within a block
(to compare, or to test that both agree).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

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
    if state_dict is not None and _reuse_enabled and _reattach(model, adapter_name, rank, targets, state_dict):
        _set_scales(_wrappers_of(model, targets), adapter_name, multiplier)
        return
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
    if loading and _reuse_enabled:
        _remember(model, adapter_name, rank, targets)


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

    The base layers are the original module objects with their original (never merged) weights. Wrappers that
    ``add_lora`` loaded weights into are kept aside for the next load (see the module docstring).
    """
    if _detach_remembered(model):
        return
    # Layers were added outside the bookkeeping: the walk below removes every wrapper, the attached kept ones too
    # (their slots are not set aside, so they are dropped); kept wrappers not in the model stay valid.
    _forget_attached(model)
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


# ---- wrapper reuse (see the module docstring) --------------------------------------------------------------------

_reuse_enabled = True


@contextmanager
def fresh_lora_layers() -> Iterator[None]:
    """Within the block ``add_lora`` always injects new peft layers (what every load cost before reuse); wrappers
    kept before stay kept for loads after it."""
    global _reuse_enabled
    previous, _reuse_enabled = _reuse_enabled, False
    try:
        yield
    finally:
        _reuse_enabled = previous


@dataclass
class _Slot:
    """One adapter's entries of one wrapper, set aside: per-adapter dict values and ``ModuleDict`` children."""

    values: dict[str, Any]
    modules: dict[str, torch.nn.Module]


@dataclass
class _Position:
    """A target layer: where it sits, the original layer, and the peft wrapper kept for it."""

    path: str
    parent: torch.nn.Module
    child: str
    base: torch.nn.Module
    wrapper: LoraLayer
    parked: dict[str, _Slot] = field(default_factory=dict)


@dataclass
class _Wrappers:
    """The wrappers of one model and target set, and which adapters are attached through them now."""

    positions: list[_Position]
    configs: dict[tuple[str, int], Any]  # (adapter, rank) -> the LoraConfig peft keeps in model.peft_config
    attached: list[str] = field(default_factory=list)


# Keyed weakly by model: a reloaded or deep-copied model starts without kept wrappers, and a dropped one takes its
# wrappers with it (they hold the model's layers, never the model itself).
_kept: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, ...], _Wrappers]] = weakref.WeakKeyDictionary()


def _wrappers_of(model: torch.nn.Module, targets: tuple[str, ...]) -> _Wrappers:
    return _kept[model][targets]


def _set_scales(kept: _Wrappers, adapter_name: str, multiplier: float) -> None:
    for position in kept.positions:
        position.wrapper.set_scale(adapter_name, multiplier)


def _forget_attached(model: torch.nn.Module) -> None:
    models = _kept.get(model, {})
    for targets in [t for t, kept in models.items() if kept.attached]:
        del models[targets]


def _park(wrapper: LoraLayer, adapter_name: str) -> _Slot | None:
    """Take ``adapter_name``'s entries out of ``wrapper`` (None, leaving it unchanged, when one is of a kind this
    does not know how to put back)."""
    modules: dict[str, torch.nn.Module] = {}
    for attr, child in wrapper.named_children():
        if isinstance(child, torch.nn.ModuleDict):
            if adapter_name in child:
                modules[attr] = child[adapter_name]
        elif adapter_name in getattr(child, "_modules", {}) or adapter_name in getattr(child, "_parameters", {}):
            return None
    values = {attr: value[adapter_name] for attr, value in vars(wrapper).items() if _keyed_by(value, adapter_name)}
    for attr in modules:
        del getattr(wrapper, attr)[adapter_name]
    for attr in values:
        del getattr(wrapper, attr)[adapter_name]
    return _Slot(values, modules)


def _keyed_by(value: object, adapter_name: str) -> bool:
    return isinstance(value, dict) and adapter_name in value


def _unpark(wrapper: LoraLayer, adapter_name: str, slot: _Slot) -> None:
    for attr, value in slot.values.items():
        getattr(wrapper, attr)[adapter_name] = value
    for attr, module in slot.modules.items():
        getattr(wrapper, attr)[adapter_name] = module


def _reattach(
    model: torch.nn.Module,
    adapter_name: str,
    rank: int,
    targets: tuple[str, ...],
    state_dict: Mapping[str, torch.Tensor],
) -> bool:
    """Attach ``adapter_name`` through kept wrappers; False (nothing changed) when they cannot take it."""
    kept = _kept.get(model, {}).get(targets)
    if kept is None or adapter_name in kept.attached:
        return False
    source = _free_slot(kept, adapter_name, rank)
    if source is None:
        return False
    peft_config = vars(model).get("peft_config")
    if kept.attached:
        # Later concepts of the same job: only adapters attached through these wrappers may be on the model.
        if peft_config is None or list(peft_config) != kept.attached:
            return False
        if any(getattr(p.parent, p.child) is not p.wrapper for p in kept.positions):
            return False
    elif peft_config is not None or any(getattr(p.parent, p.child) is not p.base for p in kept.positions):
        return False
    weights = _kept_weights(kept, source, rank, state_dict)
    if weights is None:
        return False
    first = not kept.attached
    for position, (lora_a, lora_b) in zip(kept.positions, weights, strict=True):
        wrapper = position.wrapper
        if first:
            setattr(position.parent, position.child, wrapper)
            wrapper.enable_adapters(True)
        _unpark(wrapper, adapter_name, position.parked.pop(source))
        # Assigned, not copied into: the tensors are the adapter's own (moved to the base layer's device and dtype),
        # as peft's loading does, so a cached adapter is never written through a kept wrapper.
        wrapper.lora_A[adapter_name].weight = torch.nn.Parameter(lora_a)
        wrapper.lora_B[adapter_name].weight = torch.nn.Parameter(lora_b)
        wrapper.set_adapter([adapter_name])  # peft makes the newest adapter the active one on injection
    configs: dict[str, Any] = peft_config if peft_config is not None else {}
    kept.configs[(adapter_name, rank)] = kept.configs.pop((source, rank))
    configs[adapter_name] = kept.configs[(adapter_name, rank)]
    vars(model)["peft_config"] = configs  # where peft keeps it (and ``remove_lora`` deletes it)
    kept.attached.append(adapter_name)
    return True


def _free_slot(kept: _Wrappers, adapter_name: str, rank: int) -> str | None:
    """The name under which a slot of rank ``rank`` is set aside in every kept wrapper and not attached now:
    ``adapter_name``'s own when it has one, else any other's, or None.

    A slot holds nothing of its adapter's name but the keys it is filed under (peft's per-adapter dicts, the
    ``LoraConfig``), so an adapter of another name takes it over: a job that attaches ``"diagnostic"`` between
    generations that attach ``"concept_0"`` and ``"concept_1"`` reuses their wrappers instead of injecting new
    ones and dropping the kept ones.
    """
    names = [adapter_name] + [name for name, _ in kept.configs if name != adapter_name]
    for name in names:
        if (name, rank) in kept.configs and name not in kept.attached:
            if all(name in position.parked for position in kept.positions):
                return name
    return None


def _kept_weights(
    kept: _Wrappers, adapter_name: str, rank: int, state_dict: Mapping[str, torch.Tensor]
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each position's ``(lora_A, lora_B)`` from ``state_dict`` on its base layer's device and dtype, or None when
    the keys or shapes do not fit or a wrapper has no slot of that rank set aside under ``adapter_name`` (peft's own
    path then loads, or refuses, it)."""
    if len(state_dict) != 2 * len(kept.positions):
        return None
    weights = []
    for position in kept.positions:
        slot = position.parked.get(adapter_name)
        lora_a = state_dict.get(f"{position.path}.lora_A.weight")
        lora_b = state_dict.get(f"{position.path}.lora_B.weight")
        wrapper = position.wrapper
        if slot is None or slot.values.get("r") != rank or lora_a is None or lora_b is None:
            return None
        if tuple(lora_a.shape) != (rank, wrapper.in_features) or tuple(lora_b.shape) != (wrapper.out_features, rank):
            return None
        base_weight = position.base.weight
        assert isinstance(base_weight, torch.Tensor)  # targets are Linear layers
        weights.append(
            (lora_a.to(base_weight.device, base_weight.dtype), lora_b.to(base_weight.device, base_weight.dtype))
        )
    return weights


def _remember(model: torch.nn.Module, adapter_name: str, rank: int, targets: tuple[str, ...]) -> None:
    """After peft loaded ``adapter_name``: keep its wrappers (new ones on a clean model, or the kept ones it added a
    slot to) for later loads."""
    layers = [(path, m) for path, m in model.named_modules() if isinstance(m, LoraLayer)]
    config = vars(model)["peft_config"][adapter_name]
    models = _kept.setdefault(model, {})
    kept = models.get(targets)
    if kept is not None and kept.attached:
        if [p.wrapper for p in kept.positions] != [m for _, m in layers] or list(vars(model)["peft_config"]) != [
            *kept.attached,
            adapter_name,
        ]:
            models.pop(targets)
            return
        for position in kept.positions:
            position.parked.pop(adapter_name, None)  # replaced by the slot peft just made
        kept.configs[(adapter_name, rank)] = config
        kept.attached.append(adapter_name)
        return
    models.clear()  # wrappers kept before are no longer the ones in the model
    if list(vars(model)["peft_config"]) != [adapter_name]:
        return  # not the first adapter on a clean model: other layers are not accounted for, keep nothing
    positions = []
    for path, wrapper in layers:
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        positions.append(_Position(path, parent, child, wrapper.get_base_layer(), wrapper))
    models[targets] = _Wrappers(positions, {(adapter_name, rank): config}, [adapter_name])


def _detach_remembered(model: torch.nn.Module) -> bool:
    """Put the base layers back at the kept positions and set the attached slots aside; False when the model holds
    adapters the kept wrappers do not account for (the caller then walks the model)."""
    models = _kept.get(model)
    if not models:
        return False
    live = [kept for kept in models.values() if kept.attached]
    peft_config = vars(model).get("peft_config")
    if len(live) != 1 or peft_config is None or list(peft_config) != live[0].attached:
        return False
    kept = live[0]
    if any(getattr(p.parent, p.child) is not p.wrapper for p in kept.positions):
        return False
    parked: list[dict[str, _Slot]] = []
    for position in kept.positions:
        slots = {}
        for adapter_name in kept.attached:
            slot = _park(position.wrapper, adapter_name)
            if slot is None:
                return False  # nothing parked is lost: the caller's walk removes the wrappers and forgets them
            slots[adapter_name] = slot
        parked.append(slots)
    for position, slots in zip(kept.positions, parked, strict=True):
        setattr(position.parent, position.child, position.base)
        position.parked.update(slots)
    kept.attached.clear()
    del model.peft_config
    return True
