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
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from bench.gpu_measure import (
    SMOKE_STEPS,
    STEPS,
    Setup,
    measure_generation,
    training_components,
    unet_flops,
    unet_seconds,
)
from bench.gpu_rows import ANCHORS, TARGET_CARDS, flop_rows, generation_rows, training_rows, wall_row
from bench.rows import format_table, write_rows
from bench.sd15 import sd15_components, sd15_styling_weights
from bench.training_throughput import TrainingTimes, measure_training
from core.ml.components import load_components
from core.ml.styling.weights import load_styling_weights

TRAIN_BATCHES = (1, 2, 4)


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
    rows.append(wall_row(setup, total))
    write_rows(rows, args.rows)
    print("\nanchors: " + "; ".join(ANCHORS))
    if not setup.judged:
        print("CPU rehearsal: no row has a target or a verdict; nothing here is a GPU figure.")
    print()
    print(format_table(rows))


if __name__ == "__main__":
    main()
