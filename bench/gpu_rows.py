"""The GPU benchmark's table, anchors and targets: the cards' peak TFLOP/s, the published anchors, the issue's
targets (judged on an H100-class GPU run only) and the rows each measurement becomes.
"""

from __future__ import annotations

import math

from bench.gpu_measure import STEPS, Setup
from bench.rows import Row
from bench.training_throughput import TrainingTimes
from core.training_options import EDLoRAConfig

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


def wall_row(setup: Setup, total: float) -> Row:
    """The wall time of the whole run, held to the issue's bound on a GPU run."""
    return Row(
        "gpu.bench.wall_s",
        total,
        "s",
        "the issue's bound for one H100",
        _target(setup, f"< {TIME_LIMIT_S:.0f}"),
        f"Wall time of this whole run, model building included ({_where(setup)}).",
    )
