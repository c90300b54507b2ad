"""The generation-cost benchmark's step-timing arms: the arms of one denoising step and how they are timed.

``measure`` builds and times every arm of ``bench.fusion_cost`` (plain, regional, Conductor batched and
sequential, styled, reference-style) on one UNet; ``run_rounds`` alternates them; ``Costs`` holds the medians.
The helpers build what the arms need: adapter-free shallow copies, random LoRA adapters, the reference code's
merged UNet copies, and a styling step's UNet with the IP-Adapter loaded.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from peft.tuners.tuners_utils import BaseTunerLayer

from core.ml.components import SDComponents
from core.ml.edlora.attention import cross_attention_layer_names, layerwise_cross_attention
from core.ml.edlora.lora import UNET_TARGETS, activate_lora, add_lora, lora_scope, lora_state_dict
from core.ml.fusion.multipath import MultipathState, multipath_attention, path_adapter_names
from core.ml.fusion.regional_attention import RegionalState, regional_attention
from core.ml.fusion.request import DEFAULT_LORA_WEIGHT
from core.ml.styling.pipeline import controlnet_pipeline, load_style_adapter

Step = Callable[[], object]
Arm = Callable[[], AbstractContextManager[Step]]
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

CONTROL_SCALE = 0.6  # the styling stage's default controlnet_conditioning_scale


@dataclass
class Costs:
    """Median milliseconds per step of each arm at one size, plus what the rows need to say about it."""

    label: str
    side: int
    ms: dict[str, float]
    runs: dict[str, list[float]] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)


def shallow_copy(module: ModuleT) -> ModuleT:
    """A new module tree that shares every parameter and buffer with ``module`` (no weight memory).

    Adapters injected into one tree later replace child modules of that tree only, so the copy stays adapter-free.
    """
    memo: dict[int, object] = {id(p): p for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA), so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_rounds(arms: dict[str, Arm], *, rounds: int, steps: int, device: torch.device) -> dict[str, list[float]]:
    """Milliseconds per step of each arm in each round.

    Each arm enters its context (installing its processors), takes one untimed warm-up step, then ``steps`` timed
    ones; the order of the arms is reversed every other round.
    """
    times: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(rounds):
        order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
        for name in order:
            with arms[name]() as step:
                step()
                sync(device)
                started = time.perf_counter()
                for _ in range(steps):
                    step()
                sync(device)
                times[name].append((time.perf_counter() - started) * 1000 / steps)
    return times


def attach_random_adapters(unet: UNet2DConditionModel, count: int, seed: int = 0) -> list[str]:
    """Add ``count`` random rank-4 peft adapters (scale ``DEFAULT_LORA_WEIGHT``) to ``unet``; their names."""
    names = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(count):
            name = f"bench_{i}"
            add_lora(unet, name, rank=4, targets=UNET_TARGETS, multiplier=DEFAULT_LORA_WEIGHT)
            for n, p in unet.named_parameters():
                if f"lora_B.{name}." in n:
                    torch.nn.init.normal_(p, std=0.01)  # peft starts B at zero; a real adapter is not a no-op
            names.append(name)
    return names


def _enable_adapters(unet: torch.nn.Module) -> None:
    # `activate_lora(unet, None)` disables adapters layer by layer, and a disabled peft layer ignores `adapter_names`
    # (it returns the base output): switch them back on so that later batched forwards really apply the LoRA.
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(True)


def merged_copy(unet: UNet2DConditionModel, lora: dict[str, torch.Tensor], multiplier: float) -> UNet2DConditionModel:
    """What the reference does per concept and step: deep-copy the UNet, merge the LoRA into a copy of its state
    dict (``W + multiplier · B A``) and load it."""
    custom = copy.deepcopy(unet)
    state = custom.state_dict()
    for key, down in lora.items():
        if ".lora_A." not in key:
            continue
        up = lora[key.replace(".lora_A.", ".lora_B.")]
        target = key.replace(".lora_A.weight", ".weight")
        state[target] = state[target] + multiplier * (up.to(state[target]) @ down.to(state[target]))
    custom.load_state_dict(state)
    return custom


@dataclass
class Styling:
    """A styling step's parts: a UNet tree with the IP-Adapter loaded, its ControlNet, the image-embedding width."""

    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    embed_dim: int


def prepare_styling(
    components: SDComponents, unet: UNet2DConditionModel, ip_root: Path, controlnet: ControlNetModel, embed_dim: int
) -> Styling:
    """Load the IP-Adapter at ``ip_root`` into ``unet`` (a tree of its own) as ``style_images`` does, style mode."""
    pipe = controlnet_pipeline(components, unet, controlnet, components.scheduler)
    load_style_adapter(pipe, ip_root, "style", 1.0)
    unet.to(components.device, components.dtype)
    return Styling(unet=unet, controlnet=controlnet, embed_dim=embed_dim)


def measure(
    components: SDComponents,
    *,
    label: str,
    side: int,
    concepts: Sequence[int],
    rounds: int,
    steps: int,
    styling: Callable[[UNet2DConditionModel], Styling] | None,
    reference: bool,
) -> Costs:
    """Time every arm (module docstring) for ``concepts`` (values of N) on ``components.unet``.

    ``styling`` builds the styling parts for an adapter-free UNet tree (None: no styling arm). ``components.unet``
    gets adapters and processors only inside this call.
    """
    unet, device, dtype = components.unet, components.device, components.dtype
    latent = side // 8
    layers = len(cross_attention_layer_names(unet))
    dim = int(unet.config.cross_attention_dim)
    rows = 2  # one image, classifier-free guidance
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 4, latent, latent, generator=generator).to(device, dtype)
    t = torch.tensor(500, device=device)
    context = torch.randn(1, layers, 77, dim, generator=generator).to(device, dtype)  # layer-wise (ED-LoRA) states
    plain_states = context[:, 0].expand(rows, -1, -1)  # [2, 77, dim]: ordinary conditioning
    plain_unet = shallow_copy(unet)
    styled = styling(shallow_copy(unet)) if styling is not None else None
    arms: dict[str, Arm] = {}
    peaks: dict[str, float] = {}

    @contextmanager
    def plain() -> Iterator[Step]:
        yield lambda: plain_unet(x, t, encoder_hidden_states=plain_states)

    arms["plain"] = plain
    if styled is not None:
        control = torch.rand(rows, 3, side, side, generator=generator).to(device, dtype)
        embeds = torch.randn(1, 1, styled.embed_dim, generator=generator).to(device, dtype)
        image_embeds = [torch.cat([torch.zeros_like(embeds), embeds])]  # [2, 1, D]: zeros for the negative half

        def styling_step() -> object:
            down, mid = styled.controlnet(
                x,
                t,
                encoder_hidden_states=plain_states,
                controlnet_cond=control,
                conditioning_scale=CONTROL_SCALE,
                return_dict=False,
            )
            return styled.unet(
                x,
                t,
                encoder_hidden_states=plain_states,
                added_cond_kwargs={"image_embeds": image_embeds},
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            )

        arms["styled"] = lambda: nullcontext(styling_step)

    with torch.no_grad(), lora_scope(unet):
        adapters = attach_random_adapters(unet, max(concepts))
        for n in concepts:
            paths: list[str | None] = [None, *adapters[:n]]
            masks = torch.zeros(n, 1, latent, latent, device=device)
            for k in range(n):
                masks[k, :, :, k * latent // n : (k + 1) * latent // n] = 1
            regions = RegionalState(
                list(adapters[:n]),
                masks[:, 0],
                context.expand(n, -1, -1, -1),
                cfg=True,
                negatives=context.expand(n, -1, -1, -1),
            )
            state = MultipathState(paths=n + 1, adapter_names=path_adapter_names(paths, rows), masks=masks, cfg=True)

            @contextmanager
            def regional(regions: RegionalState = regions) -> Iterator[Step]:
                with regional_attention(unet, regions):
                    yield lambda: unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1))

            @contextmanager
            def batched(state: MultipathState = state) -> Iterator[Step]:
                batch_x = x.repeat(state.paths, 1, 1, 1)
                batch_states = context.expand(rows * state.paths, -1, -1, -1)
                with multipath_attention(unet, state):
                    yield lambda: unet(batch_x, t, encoder_hidden_states=batch_states)

            @contextmanager
            def sequential(paths: list[str | None] = paths) -> Iterator[Step]:
                def step() -> None:
                    for adapter in paths:
                        activate_lora(unet, adapter, DEFAULT_LORA_WEIGHT)
                        unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1))

                try:
                    with layerwise_cross_attention(unet):
                        yield step
                finally:
                    _enable_adapters(unet)

            arms[f"regional.n{n}"] = regional
            arms[f"batched.n{n}"] = batched
            arms[f"sequential.n{n}"] = sequential
            if device.type == "cuda":
                with batched() as step:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    step()
                    peaks[f"batched.n{n}"] = torch.cuda.max_memory_allocated(device) / 2**20
        if reference and 2 in concepts:
            loras = [lora_state_dict(unet, name) for name in adapters[:2]]

            @contextmanager
            def reference_arm() -> Iterator[Step]:
                def step() -> None:
                    for lora in loras:
                        custom = merged_copy(plain_unet, lora, DEFAULT_LORA_WEIGHT)
                        custom(x, t, encoder_hidden_states=plain_states)
                        del custom
                        gc.collect()
                    plain_unet(x, t, encoder_hidden_states=plain_states)

                anomaly = torch.is_anomaly_enabled()
                torch.autograd.set_detect_anomaly(True)
                try:
                    yield step
                finally:
                    torch.autograd.set_detect_anomaly(anomaly)

            arms["reference.n2"] = reference_arm
        times = run_rounds(arms, rounds=rounds, steps=steps, device=device)
    return Costs(
        label=label, side=side, ms={k: statistics.median(v) for k, v in times.items()}, runs=times, peak_mib=peaks
    )
