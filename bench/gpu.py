"""The GPU benchmark: generation latency, ED-LoRA training step time and memory, achieved TFLOP/s, on one card.

One command on a CUDA machine (no weights needed; sized for the issue's bound of 8 minutes on one H100, which
the ``gpu.bench.wall_s`` row checks; not yet run on a GPU when written, so no GPU figure is recorded here):

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.gpu --rows bench/gpu.json

It builds SD 1.5-shaped models with random weights (``bench.sd15``: the same layers, sizes and FLOPs as the real
ones; timing does not depend on weight values) at 512×512, generation in fp16 (``--dtype bf16`` for bf16),
training in bf16 (``--train-dtype``), and measures

- UNet FLOPs of one plain sampling step (batch 2: classifier-free guidance; counted with
  ``torch.utils.flop_counter.FlopCounterMode`` under the math attention backend, so attention is counted on any
  device) and the achieved TFLOP/s of that forward (CUDA events), against the card's dense fp16/bf16 peak from a
  table by device name (H100 SXM / H200 989, H100 PCIe 756, A100 312, ...);
- generation latency, text encoding to decoded image, at 30 and 50 steps: ``plain`` (the base UNet, no adapters),
  ``conductor_n2`` (``generate_conductor`` with 2 random ED-LoRA concepts: layout guidance on the first 30% of the
  steps, 7 mask refinements), ``conductor_n2_styled`` (the same, then ``style_images``: IP-Adapter in the style
  block + canny ControlNet, same step count, as the worker's styling stage runs it);
- ED-LoRA training (``bench.training_throughput.measure_training``): the project's trainer vs the plain baseline
  loop, seconds per step and peak memory at batch 1, 2 and 4, and 500 steps at batch 4 (the trainer's default)
  estimated from the step time (setup not counted).

Targets (on an H100; on another card their rows have no verdict): 50-step plain <= 0.5 s, Conductor N = 2 with
styling <= 2 s, 500 ED-LoRA steps <= 1 min; trainer >= 1.44x the baseline at batch 4 (any card). Anchors, printed
beside the plain rows: diffusers SDPA + torch.compile + channels_last ≈ 1.06 s for 50 steps on an A100; stable-fast
≈ 105 it/s (≈ 0.48 s for 50 steps) on an H100. The table of rows is printed last.

Rehearsal on a CPU (``make test`` runs it through ``tests/bench/test_gpu.py``; seconds):

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.gpu --cpu-smoke [--rows FILE]

runs the whole script with the tiny preset at 64 px, 2 and 3 steps in place of 30 and 50, 4 training steps. Its
rows carry the same names, no targets and no verdicts: nothing is claimed for a GPU from a CPU run.
``--cpu-smoke --models sd15 --side 64`` rehearses the SD 1.5-shaped builders and code paths the same way (several
minutes and ~13 GB of memory on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.rows import Row, format_table, write_rows
from bench.sd15 import random_edlora, sd15_components, sd15_styling_weights
from bench.training_throughput import TrainingTimes, measure_training
from core.ml.components import SDComponents, load_components
from core.ml.fusion.conductor import generate_conductor
from core.ml.fusion.request import ConceptPlacement, SamplingRequest
from core.ml.fusion.sampler import denoise
from core.ml.styling.pipeline import style_images
from core.ml.styling.weights import StylingWeights, load_styling_weights
from core.training_options import EDLoRAConfig

STEPS = (30, 50)
SMOKE_STEPS = (2, 3)  # the CPU rehearsal's stand-ins for 30 and 50
TRAIN_BATCHES = (1, 2, 4)
GUIDANCE_SCALE = 7.5
PROMPT = "a <bench-dog> and a <bench-cat> on the beach"
STYLE_PROMPT = "a dog and a cat on the beach"  # what the styling stage reads: concepts as their class words
TIME_LIMIT_S = 480.0  # the bound for the whole run on one H100

TARGET_PLAIN_50_S = 0.5
TARGET_STYLED_50_S = 2.0
TARGET_500_STEPS_S = 60.0
TARGET_TRAINER_SPEEDUP = 1.44

ANCHORS = (
    "diffusers SDPA + torch.compile + channels_last ≈ 1.06 s / 50 steps (A100)",
    "stable-fast ≈ 105 it/s ≈ 0.48 s / 50 steps (H100)",
)

ANCHOR_CELLS = {  # the anchors as short cells of the table, scaled by steps for 30 (their per-step rate)
    50: "anchors: A100 diffusers+compile 1.06 s, H100 stable-fast 0.48 s",
    30: "anchors x 30/50: A100 0.64 s, H100 0.29 s",
}

# Dense fp16/bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity), by a substring of the device name;
# the first match wins, so specific names come before general ones.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),
    ("T4", 65.0),
)
TARGET_CARDS = ("H100", "H200", "H800")  # the targets are for an H100 (H200 and H800: the same compute)


def peak_tflops(device_name: str) -> float | None:
    """The card's dense fp16/bf16 peak TFLOP/s from ``PEAK_TFLOPS``, None for an unknown card (or a CPU)."""
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


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


# ---- rows -----------------------------------------------------------------------------------------------------------


def _target(setup: Setup, target: str, *, h100: bool = True) -> str | None:
    """``target`` where this run may be judged: a GPU run (and an H100-class card for the H100 targets)."""
    if not setup.judged or (h100 and not setup.h100_class):
        return None
    return target


def _where(setup: Setup) -> str:
    if setup.judged:
        return f"{setup.card}, SD 1.5-shaped random weights, {setup.side} px, {setup.components.dtype}"
    return (
        f"CPU rehearsal ({setup.card}): {setup.components.preset} models at {setup.side} px, "
        f"{setup.steps[0]}/{setup.steps[1]} steps in place of 30/50; not a GPU figure"
    )


def flop_rows(setup: Setup, flops: float, seconds: float) -> list[Row]:
    """Achieved TFLOP/s of a plain sampling step's UNet forward, and its fraction of the card's peak."""
    achieved = flops / seconds / 1e12
    peak = peak_tflops(setup.card) if setup.components.device.type == "cuda" else None
    where = _where(setup)
    return [
        Row(
            "gpu.unet.tflops",
            achieved,
            "TFLOP/s",
            f"{flops / 1e9:.0f} GFLOP per forward (batch 2, 77 tokens), {seconds * 1000:.1f} ms",
            None,
            f"UNet FLOPs of one CFG sampling step (FlopCounterMode) over its time ({where}).",
        ),
        Row(
            "gpu.unet.peak_fraction",
            achieved / peak * 100 if peak else math.nan,
            "%",
            f"the card's dense fp16/bf16 peak, {peak:.0f} TFLOP/s" if peak else "no known peak for this device",
            None,
            f"How much of the card one plain UNet forward at batch 2 uses ({where}); a small batch at 64x64 latents "
            "does not fill a large GPU, which is the room batching (Conductor) and compilation have.",
        ),
    ]


def generation_rows(setup: Setup, latency: dict[tuple[str, int], float], unet_gflop: float) -> list[Row]:
    """Seconds per image of each arm at 30 and 50 steps (row names keep 30/50 in the CPU rehearsal)."""
    where = _where(setup)
    labels = {
        "plain": "plain sampling (text encoder, CFG on the base UNet, VAE decode)",
        "conductor_n2": "Concept Conductor with 2 ED-LoRA concepts (guidance on 30% of the steps, 7 refinements)",
        "conductor_n2_styled": "Conductor N = 2, then the styling stage (IP-Adapter style block + canny ControlNet)",
    }
    rows = []
    for arm, label in labels.items():
        for name, steps in zip(STEPS, setup.steps, strict=True):
            seconds = latency[arm, steps]
            target = None
            baseline = f"{steps / seconds:.1f} steps/s"
            if arm == "plain":
                baseline = ANCHOR_CELLS[name]
                if name == 50:
                    target = _target(setup, f"<= {TARGET_PLAIN_50_S}")
            if arm == "conductor_n2_styled" and name == 50:
                target = _target(setup, f"<= {TARGET_STYLED_50_S}")
            about = f"{label}, {steps} steps, one image ({where})."
            if arm == "plain" and setup.judged:
                about += f" UNet alone: {unet_gflop * steps / seconds / 1e3:.0f} TFLOP/s over the whole image."
            rows.append(Row(f"gpu.generation.{arm}.steps{name}", seconds, "s", baseline, target, about))
    return rows


def training_rows(setup: Setup, times: dict[int, TrainingTimes], unet_gflop_per_row: float) -> list[Row]:
    """Trainer step time, speed-up over the baseline and peak memory per batch, and the 500-step estimate."""
    where = _where(setup)
    resolution = setup.side
    rows = []
    for batch, t in times.items():
        rows.append(
            Row(
                f"gpu.edlora.b{batch}.step_s",
                t.project,
                "s",
                f"baseline loop {t.baseline:.3f} s/step",
                None,
                f"ED-LoRA optimizer step of the project's trainer at batch {batch}, {resolution} px, "
                f"{setup.train_dtype} ({where}); UNet forward + backward ≈ "
                f"{3 * unet_gflop_per_row * batch / t.project / 1e3:.1f} TFLOP/s (3x the forward's FLOPs).",
            )
        )
        rows.append(
            Row(
                f"gpu.edlora.b{batch}.vs_baseline",
                t.speedup,
                "x",
                "plain loop: VAE per step, fp32, no SDPA, unfused AdamW",
                _target(setup, f">= {TARGET_TRAINER_SPEEDUP}", h100=False) if batch == 4 else None,
                f"Baseline seconds per step over the trainer's at batch {batch} ({where}); the target is for "
                "batch 4, the trainer's default.",
            )
        )
        peak = t.project_peak_mib
        rows.append(
            Row(
                f"gpu.edlora.b{batch}.peak_mib",
                peak if peak is not None else math.nan,
                "MiB",
                f"baseline {t.baseline_peak_mib:.0f} MiB" if t.baseline_peak_mib is not None else "no CUDA memory",
                None,
                f"torch.cuda.max_memory_allocated during the trainer's run at batch {batch}, models included "
                f"({where}).",
            )
        )
    default_batch = EDLoRAConfig().batch_size
    per_step = times[default_batch].project if default_batch in times else times[max(times)].project
    rows.append(
        Row(
            "gpu.edlora.steps500_s",
            500 * per_step,
            "s",
            f"{per_step:.3f} s/step at batch {default_batch}",
            _target(setup, f"<= {TARGET_500_STEPS_S:.0f}"),
            f"500 ED-LoRA steps (the trainer's default run) at batch {default_batch}, from the measured step time; "
            f"setup (latent cache, model copies) not counted ({where}).",
        )
    )
    return rows


# ---- setup and main -------------------------------------------------------------------------------------------------


def build_setup(args: argparse.Namespace, workdir: Path) -> Setup:
    """Models and counts: SD 1.5-shaped on CUDA, the tiny preset for the CPU rehearsal."""
    smoke = bool(args.cpu_smoke)
    device = torch.device("cpu" if smoke else args.device)
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU, {torch.get_num_threads()} threads"
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    dtype = torch.float32 if device.type == "cpu" else dtypes[args.dtype]
    train_dtype = torch.float32 if device.type == "cpu" else dtypes[args.train_dtype]
    models = args.models or ("tiny" if smoke else "sd15")
    if models == "tiny":
        components = load_components("tiny", args.models_root, device=device, dtype=dtype)
        styling = load_styling_weights("tiny", args.models_root, device=device, dtype=dtype)
    else:
        components = sd15_components(workdir, device=device, dtype=dtype)
        styling = sd15_styling_weights(components.unet, workdir, device=device, dtype=dtype)
    return Setup(
        components=components,
        styling=styling,
        card=card,
        side=args.side or components.default_resolution,
        steps=SMOKE_STEPS if smoke else STEPS,
        repeats=1 if smoke else args.repeats,
        train_steps=4 if smoke else args.train_steps,
        train_repeats=1,
        train_dtype=train_dtype,
        judged=device.type == "cuda" and models == "sd15" and not smoke,
        h100_class=any(name in card for name in TARGET_CARDS),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="rehearse the whole run on CPU with tiny models")
    parser.add_argument("--quick", dest="cpu_smoke", action="store_true", help="the same as --cpu-smoke")
    parser.add_argument("--rows", type=Path, help="write the measured rows to this JSON file")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("fp16", "bf16"), default="fp16", help="generation precision")
    parser.add_argument("--train-dtype", choices=("fp16", "bf16", "fp32"), default="bf16")
    parser.add_argument("--models", choices=("sd15", "tiny"), help="default: sd15, tiny for --cpu-smoke")
    parser.add_argument("--side", type=int, help="image side in pixels (default: the model's, 512 for sd15)")
    parser.add_argument("--repeats", type=int, default=2, help="timed images per arm and step count")
    parser.add_argument("--train-steps", type=int, default=10, help="optimizer steps per training run (3 warm-up)")
    parser.add_argument("--models-root", type=Path, default=Path(".models"), help="where the tiny preset is built")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; --cpu-smoke rehearses the run on CPU (no GPU figures)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-gpu-") as tmp:
        setup = build_setup(args, Path(tmp))
        components = setup.components
        latent = setup.side // components.vae_scale_factor
        print(
            f"{setup.card}: {components.preset} at {setup.side} px, {components.dtype}; built in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )

        flops = unet_flops(components, 2, latent)
        seconds = unet_seconds(components, 2, latent, iterations=20 if setup.judged else 2)
        rows = flop_rows(setup, flops, seconds)
        print(f"UNet forward: {flops / 1e9:.1f} GFLOP at batch 2, {seconds * 1000:.1f} ms", flush=True)

        mark = time.perf_counter()
        latency = measure_generation(setup)
        rows += generation_rows(setup, latency, flops / 1e9)
        for (arm, steps), value in latency.items():
            print(f"generation {arm:<20} {steps:3d} steps {value:7.3f} s", flush=True)
        print(f"generation: {time.perf_counter() - mark:.0f} s", flush=True)

        mark = time.perf_counter()
        training = training_components(components, setup.train_dtype)
        times: dict[int, TrainingTimes] = {}
        for batch in TRAIN_BATCHES:
            times[batch] = measure_training(
                training,
                batch_size=batch,
                steps=setup.train_steps,
                repeats=setup.train_repeats,
                resolution=setup.side,
            )
            t = times[batch]
            print(
                f"training batch {batch}: trainer {t.project:.3f} s/step, baseline {t.baseline:.3f} s/step "
                f"({t.speedup:.2f}x), peak {t.project_peak_mib or 0:.0f} / {t.baseline_peak_mib or 0:.0f} MiB",
                flush=True,
            )
        rows += training_rows(setup, times, flops / 2 / 1e9)
        print(f"training: {time.perf_counter() - mark:.0f} s", flush=True)

    total = time.perf_counter() - started
    rows.append(
        Row(
            "gpu.bench.wall_s",
            total,
            "s",
            "the issue's bound for one H100",
            _target(setup, f"< {TIME_LIMIT_S:.0f}"),
            f"Wall time of this whole run, model building included ({_where(setup)}).",
        )
    )
    write_rows(rows, args.rows)
    print("\nanchors: " + "; ".join(ANCHORS))
    if not setup.judged:
        print("CPU rehearsal: no row has a target or a verdict; nothing here is a GPU figure.")
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
