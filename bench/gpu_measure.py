"""The GPU benchmark's measurements: what a run measures on (``Setup``), UNet FLOPs and seconds per forward,
the generation arms (plain, Conductor N = 2, Conductor N = 2 then styling) and their latency, and the models
cast for training.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.sd15 import random_edlora
from core.ml.components import SDComponents
from core.ml.fusion.conductor import generate_conductor
from core.ml.fusion.request import ConceptPlacement, SamplingRequest
from core.ml.fusion.sampler import denoise
from core.ml.styling.pipeline import style_images
from core.ml.styling.weights import StylingWeights

STEPS = (30, 50)
SMOKE_STEPS = (2, 3)  # the CPU rehearsal's stand-ins for 30 and 50
GUIDANCE_SCALE = 7.5
PROMPT = "a <bench-dog> and a <bench-cat> on the beach"
STYLE_PROMPT = "a dog and a cat on the beach"  # what the styling stage reads: concepts as their class words


@dataclass(frozen=True)
class Setup:
    """What one run measures on: the models, sizes, counts, and whether its figures may be judged as GPU figures."""

    components: SDComponents
    styling: StylingWeights
    card: str
    side: int
    steps: tuple[int, int]
    repeats: int
    train_steps: int
    train_repeats: int
    train_dtype: torch.dtype
    judged: bool  # a real GPU run: rows get targets (else: a rehearsal, no verdicts)
    h100_class: bool


def _sync(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run: Callable[[], object]) -> float:
    _sync(device)
    started = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - started


# ---- UNet FLOPs and achieved TFLOP/s --------------------------------------------------------------------------------


def unet_flops(components: SDComponents, batch: int, latent: int) -> float:
    """FLOPs of one UNet forward at ``batch`` rows on a ``latent``² grid with 77 text tokens.

    Counted under the math attention backend, whose matmuls the counter sees on every device (the fused kernels
    are counted on CUDA only); the attention FLOPs are the same either way.
    """
    unet, device, dtype = components.unet, components.device, components.dtype
    x = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
    states = torch.randn(batch, 77, int(unet.config.cross_attention_dim), device=device, dtype=dtype)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor(500, device=device), encoder_hidden_states=states)
    return float(counter.get_total_flops())


def unet_seconds(components: SDComponents, batch: int, latent: int, iterations: int) -> float:
    """Seconds per UNet forward (fused attention, as sampling runs), after 3 warm-up forwards; CUDA events on a GPU."""
    unet, device, dtype = components.unet, components.device, components.dtype
    x = torch.randn(batch, 4, latent, latent, device=device, dtype=dtype)
    states = torch.randn(batch, 77, int(unet.config.cross_attention_dim), device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        for _ in range(3):
            unet(x, t, encoder_hidden_states=states)
        if device.type != "cuda":
            started = time.perf_counter()
            for _ in range(iterations):
                unet(x, t, encoder_hidden_states=states)
            return (time.perf_counter() - started) / iterations
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(iterations):
            unet(x, t, encoder_hidden_states=states)
        end.record()
        torch.cuda.synchronize(device)
        return float(start.elapsed_time(end)) / 1000 / iterations


# ---- generation -----------------------------------------------------------------------------------------------------


def plain_image(components: SDComponents, *, side: int, steps: int, prompt: str) -> list[PIL.Image.Image]:
    """Ordinary sampling: the prompt and an empty negative through the text encoder, DPM-Solver++ with CFG on the
    base UNet (no adapters, diffusers' SDPA processors), VAE decode."""
    tokenizer, device = components.tokenizer, components.device
    ids = tokenizer(
        ["", prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    with torch.no_grad():
        states = components.text_encoder(ids)[0].to(components.dtype)  # [2, 77, dim]: negative, positive

        def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            uncond, cond = components.unet(model_input, t, encoder_hidden_states=states).sample.chunk(2)
            guided: torch.Tensor = uncond + GUIDANCE_SCALE * (cond - uncond)
            return guided

        request = SamplingRequest.create(
            prompt=prompt,
            placements=[],
            width=side,
            height=side,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            seed=0,
        )
        return denoise(components, predict, request)


def generation_arms(setup: Setup) -> dict[str, Callable[[int], object]]:
    """``arm(steps)`` for plain, Conductor N = 2, and Conductor N = 2 followed by the styling stage."""
    components, side = setup.components, setup.side
    placements = [
        ConceptPlacement(random_edlora(components, name, word, seed=i))
        for i, (name, word) in enumerate((("bench-dog", "dog"), ("bench-cat", "cat")))
    ]
    rng = np.random.default_rng(0)
    style_image = PIL.Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))

    def conductor(steps: int) -> list[PIL.Image.Image]:
        request = SamplingRequest.create(
            prompt=PROMPT,
            placements=placements,
            width=side,
            height=side,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            seed=0,
        )
        return generate_conductor(components, request).images

    def styled(steps: int) -> list[PIL.Image.Image]:
        return style_images(
            components,
            setup.styling,
            conductor(steps),
            prompt=STYLE_PROMPT,
            negative_prompt="",
            style_image=style_image,
            mode="style",
            control_type="canny",
            num_inference_steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            seeds=[0],
        )

    return {
        "plain": lambda steps: plain_image(components, side=side, steps=steps, prompt=STYLE_PROMPT),
        "conductor_n2": conductor,
        "conductor_n2_styled": styled,
    }


def measure_generation(setup: Setup) -> dict[tuple[str, int], float]:
    """Median seconds per image of each arm at each step count; arms alternate, one warm-up image each first."""
    arms = generation_arms(setup)
    device = setup.components.device
    for run in arms.values():
        run(setup.steps[0])  # first-call costs: allocator growth, kernel selection, the IP-Adapter file read
    times: dict[tuple[str, int], list[float]] = {(a, s): [] for a in arms for s in setup.steps}
    for round_ in range(setup.repeats):
        order = list(times) if round_ % 2 == 0 else list(reversed(times))
        for arm, steps in order:
            times[arm, steps].append(_timed(device, functools.partial(arms[arm], steps)))
    return {key: statistics.median(values) for key, values in times.items()}


# ---- training -------------------------------------------------------------------------------------------------------


def training_components(components: SDComponents, dtype: torch.dtype) -> SDComponents:
    """The same models cast to ``dtype`` in place (generation is finished by then)."""
    if dtype == components.dtype:
        return components
    for model in (components.text_encoder, components.vae, components.unet):
        model.to(dtype)
    return dataclasses.replace(components, dtype=dtype)
