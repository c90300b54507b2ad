"""Training throughput: the project's ED-LoRA step vs a straightforward baseline loop of the same model and loss.

The baseline (``baseline_train``) trains exactly what ``core.ml.edlora.trainer.train_edlora`` trains (the same
layer-wise concept embeddings, the same LoRA targets on the text encoder and UNet, the same masked, area-normalised
diffusion loss, AdamW groups, schedule and embedding freeze, the same random draws) the way diffusers' DreamBooth-LoRA
example does: every step VAE-encodes the batch's images (no latent cache), in float32, with diffusers' plain
``AttnProcessor`` (explicit attention probabilities, no SDPA) in every UNet attention layer, and ``torch.optim.AdamW``
with ``foreach=False, fused=False``. So the two arms do the same work and differ only in engineering; a test checks
that both compute the same loss at step 1.

Both arms train the same concept from the same images and masks (separation loss off: the row is about the
diffusion step both share), at the same batch size and resolution. Each run is timed from its own ``on_step``
callbacks, seconds between consecutive optimizer steps after a warm-up (the project's one-off latent encoding and
both arms' model copies are not counted); arms alternate (ABBA), and each figure is the median over runs.

    .venv/bin/python -m bench.training_throughput [--steps 20] [--repeats 4] [--batch-size 4] [--models-root DIR]
        [--rows FILE] [--quick]

Suite rows: ``training.speedup.<preset>`` = baseline s/step / project s/step on this machine's CPU for the tiny
and shapes presets (target >= 1: never slower on CPU). The GPU target (>= 1.44x at SD 1.5 size) is measured by
``bench/gpu.py`` with ``measure_training``.

Measured on this project's 2-core CPU, one torch thread, batch 4 at 64 px, 20 steps x 6 runs per arm: the trainer
before this benchmark's changes 1.20x (tiny) and 1.07x (shapes) the baseline's speed; with fused AdamW 1.27x and
1.09x. Channels-last (0.98-1.04x) and bf16 autocast (0.78x) did not pay on CPU, so they are CUDA-only.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import AttnProcessor

from bench.rows import Row, add_rows_argument, write_rows
from core.ml.components import SDComponents, load_components
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.augmentation import centre_view
from core.ml.edlora.captions import caption_templates
from core.ml.edlora.embeddings import encode_layerwise, init_concept_embeddings
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora, lora_parameters
from core.ml.edlora.trainer import ADAMW_WEIGHT_DECAY, TRAIN_ADAPTER, train_edlora
from core.ml.prompts import bind_caption
from core.progress import Progress, StepCallback, no_progress
from core.training_options import EDLoRAConfig

CONCEPT, CLASS_WORD = "star", "star"
WARMUP_STEPS = 3
"""Optimizer steps of each run that are not timed (first-call allocations, autotuning, lazy initialisation)."""

CPU_PRESETS = ("tiny", "shapes")
"""The presets of the suite rows (``tiny`` is built under ``--models-root`` on first use; ``shapes`` ships)."""


@dataclass(frozen=True)
class TrainingTimes:
    """Median seconds per optimizer step of both arms (after the warm-up), and their peak CUDA memory."""

    project: float  # median seconds per optimizer step, core.ml.edlora.trainer.train_edlora
    baseline: float  # same, the baseline loop
    project_peak_mib: float | None  # torch.cuda.max_memory_allocated during the project's run (None on CPU)
    baseline_peak_mib: float | None

    @property
    def speedup(self) -> float:
        """Baseline seconds per step over the project's (> 1: the project is faster)."""
        return self.baseline / self.project


def concept_images(count: int, side: int) -> tuple[list[PIL.Image.Image], list[PIL.Image.Image]]:
    """``count`` photos of a purple disc on a light, slightly noisy background, and each one's exact mask (white)."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(count):
        pixels = rng.integers(220, 245, size=(side, side, 3), dtype=np.uint8)
        image = PIL.Image.fromarray(pixels)
        mask = PIL.Image.new("L", (side, side), 0)
        cx, cy, r = side * (0.45 + 0.05 * (i % 3 - 1)), side * 0.5, side * (0.22 + 0.02 * (i % 3))
        box = (cx - r, cy - r, cx + r, cy + r)
        PIL.ImageDraw.Draw(image).ellipse(box, fill=(140, 50, 190))
        PIL.ImageDraw.Draw(mask).ellipse(box, fill=255)
        images.append(image)
        masks.append(mask)
    return images, masks


def benchmark_config(batch_size: int, steps: int, resolution: int | None) -> EDLoRAConfig:
    """The options both arms train with: the defaults, separation loss off (the baseline has no capture)."""
    return EDLoRAConfig(
        max_train_steps=steps, batch_size=batch_size, resolution=resolution, separation_loss_weight=0.0, seed=0
    )


def _batches(num_images: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Shuffled epochs, concatenated: the same draws the project's trainer makes."""
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending += torch.randperm(num_images, generator=generator).tolist()
        yield pending[:batch_size]
        pending = pending[batch_size:]


def baseline_train(
    components: SDComponents,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image],
    *,
    concept_name: str,
    class_word: str,
    config: EDLoRAConfig,
    on_step: StepCallback = no_progress,
) -> list[float]:
    """Train the concept the plain way (module docstring) and return the loss of every step.

    Implements what ``train_edlora`` does with masks, no captions, no augmentation views and the separation loss
    off, with the same random draws from one generator seeded with ``config.seed``, so step 1 sees the same
    latents, noise, timesteps and prompts.
    """
    device = components.device
    resolution = config.resolution or components.default_resolution
    generator = torch.Generator().manual_seed(config.seed)
    views = [centre_view(image, [mask], resolution) for image, mask in zip(images, masks, strict=True)]
    pixels = torch.stack([v.pixels for v in views]).to(device)  # [N, 3, R, R] float32 in [-1, 1]
    concept = torch.stack([v.masks[0] for v in views])  # [N, 1, R, R]
    templates = caption_templates(config.concept_type)
    # Everything in float32, as the example trains without mixed precision; the shared models are only read.
    vae = components.vae if components.dtype == torch.float32 else copy.deepcopy(components.vae).float()
    text_encoder = copy.deepcopy(components.text_encoder).float().requires_grad_(False)
    unet = copy.deepcopy(components.unet).float().requires_grad_(False)
    unet.set_attn_processor(AttnProcessor())
    losses: list[float] = []
    with layerwise_cross_attention(unet) as num_layers:
        init = init_concept_embeddings(components.tokenizer, text_encoder, class_word, num_layers, generator)
        embeddings = torch.nn.Parameter(init.to(device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            add_lora(
                text_encoder, TRAIN_ADAPTER, rank=config.rank, targets=TEXT_ENCODER_TARGETS, multiplier=config.alpha
            )
            add_lora(unet, TRAIN_ADAPTER, rank=config.rank, targets=UNET_TARGETS, multiplier=config.alpha)
        text_encoder.train()
        unet.train()
        optimizer = torch.optim.AdamW(
            [
                {"params": [embeddings], "lr": config.lr_embedding},
                {"params": lora_parameters(text_encoder, TRAIN_ADAPTER), "lr": config.lr_text_encoder},
                {"params": lora_parameters(unet, TRAIN_ADAPTER), "lr": config.lr_unet},
            ],
            betas=(0.9, 0.999),
            weight_decay=ADAMW_WEIGHT_DECAY,
            foreach=False,
            fused=False,
        )
        total = config.max_train_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))
        noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        scaling_factor = float(vae.config.scaling_factor)
        num_timesteps = int(noise_scheduler.config.num_train_timesteps)
        batches = _batches(len(views), config.batch_size, generator)
        frozen = False
        for step in range(1, total + 1):
            index = next(batches)
            with torch.no_grad():
                # The example's per-step encoding: a fresh posterior sample of the batch's pixels.
                dist = vae.encode(pixels[index]).latent_dist
                latents = dist.sample(generator=generator).float().cpu() * scaling_factor  # [B, 4, h, w]
            weight = F.interpolate(concept[index], size=latents.shape[-2:], mode="area")  # [B, 1, h, w]
            noise = torch.randn(latents.shape, generator=generator)
            if config.noise_offset:
                noise += config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
            timesteps = torch.randint(0, num_timesteps, (len(index),), generator=generator)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            picks = torch.randint(0, len(templates), (len(index),), generator=generator).tolist()
            prompts = [bind_caption(templates[p], concept_name) for p in picks]
            states = encode_layerwise(
                components.tokenizer, text_encoder, prompts, {concept_name: embeddings}, num_layers
            )
            prediction = unet(noisy.to(device), timesteps.to(device), encoder_hidden_states=states).sample
            error = (prediction - target.to(device)) ** 2  # [B, 4, h, w]
            mask = weight.to(device).expand_as(error)
            loss = ((error * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))).mean()
            losses.append(float(loss.item()))
            if not math.isfinite(losses[-1]):
                raise RuntimeError(f"baseline training diverged at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if frozen:
                embeddings.grad = None
            optimizer.step()
            schedule.step()
            threshold = config.embedding_norm_threshold
            if not frozen and threshold is not None and float(embeddings.detach().norm(dim=-1).mean()) >= threshold:
                frozen = True
            on_step(Progress("training", step, total))
    return losses


def _project_run(
    components: SDComponents,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image],
    config: EDLoRAConfig,
    on_step: StepCallback,
) -> None:
    train_edlora(
        components, images, concept_name=CONCEPT, class_word=CLASS_WORD, config=config, masks=masks, on_step=on_step
    )


def _baseline_run(
    components: SDComponents,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image],
    config: EDLoRAConfig,
    on_step: StepCallback,
) -> None:
    baseline_train(
        components, images, masks, concept_name=CONCEPT, class_word=CLASS_WORD, config=config, on_step=on_step
    )


Arm = Callable[[SDComponents, Sequence[PIL.Image.Image], Sequence[PIL.Image.Image], EDLoRAConfig, StepCallback], None]


def _timed_run(
    arm: Arm,
    components: SDComponents,
    images: Sequence[PIL.Image.Image],
    masks: Sequence[PIL.Image.Image],
    config: EDLoRAConfig,
) -> tuple[float, float | None]:
    """One training run: (median seconds per step after the warm-up, peak CUDA MiB or None)."""
    cuda = components.device.type == "cuda"
    stamps: list[float] = []

    def on_step(_: Progress) -> None:
        if cuda:
            torch.cuda.synchronize(components.device)  # time finished steps, not queued ones
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.synchronize(components.device)
        torch.cuda.reset_peak_memory_stats(components.device)
    arm(components, images, masks, config, on_step)
    peak = torch.cuda.max_memory_allocated(components.device) / 2**20 if cuda else None
    gaps = [b - a for a, b in zip(stamps[WARMUP_STEPS - 1 :], stamps[WARMUP_STEPS:], strict=False)]
    return statistics.median(gaps), peak


def measure_training(
    components: SDComponents, *, batch_size: int, steps: int, repeats: int, resolution: int | None = None
) -> TrainingTimes:
    """Seconds per optimizer step of ``train_edlora`` and of the baseline loop, side by side.

    Each of ``repeats`` rounds trains both arms for ``steps`` steps (order ABBA...), timing the steps after the
    first ``WARMUP_STEPS``; the figures are medians over rounds. ``resolution`` None = the model's native size.
    Peak memory is the maximum over the arm's runs (``torch.cuda.max_memory_allocated``, components included).

    The project trains with the components as given: in their dtype, and with float32 components on a CUDA GPU
    autocast to bfloat16 (its default ``mixed_precision="auto"``). The baseline always trains float32 copies.
    """
    if steps <= WARMUP_STEPS:
        raise ValueError(f"steps must exceed the {WARMUP_STEPS} warm-up steps, got {steps}")
    side = resolution or components.default_resolution
    images, masks = concept_images(max(batch_size, 2), side)
    config = benchmark_config(batch_size, steps, resolution)
    arms: dict[str, Arm] = {"project": _project_run, "baseline": _baseline_run}
    times: dict[str, list[float]] = {name: [] for name in arms}
    peaks: dict[str, list[float]] = {name: [] for name in arms}
    for round_ in range(repeats):
        order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
        for name in order:
            seconds, peak = _timed_run(arms[name], components, images, masks, config)
            times[name].append(seconds)
            if peak is not None:
                peaks[name].append(peak)
    return TrainingTimes(
        project=statistics.median(times["project"]),
        baseline=statistics.median(times["baseline"]),
        project_peak_mib=max(peaks["project"]) if peaks["project"] else None,
        baseline_peak_mib=max(peaks["baseline"]) if peaks["baseline"] else None,
    )


def speedup_row(preset: str, times: TrainingTimes, *, batch_size: int, resolution: int) -> Row:
    """The suite row of one CPU preset."""
    return Row(
        name=f"training.speedup.{preset}",
        value=times.speedup,
        unit="x",
        baseline=(
            "the same training as a plain loop: VAE encode per step, fp32, AttnProcessor, AdamW foreach/fused off"
        ),
        target=">= 1",
        about=(
            f"Seconds per ED-LoRA optimizer step, baseline over project, {preset} preset on CPU, batch {batch_size} "
            f"at {resolution} px (project {times.project * 1000:.1f} ms, baseline {times.baseline * 1000:.1f} ms): "
            "never slower on CPU. Here the project gains from its cached latents and fused AdamW (SDPA and plain "
            "attention cost the same at these sizes). The GPU target (>= 1.44x at SD 1.5 size) is measured by "
            "bench/gpu.py."
        ),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (3 of them warm-up)")
    parser.add_argument("--repeats", type=int, default=4, help="runs of each arm, alternating")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--presets", nargs="+", default=list(CPU_PRESETS))
    parser.add_argument("--models-root", type=Path, default=Path(".models"), help="where tiny is (built if missing)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both arms")
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 6, 1
    torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for preset in args.presets:
        components = load_components(preset, args.models_root)
        resolution = components.default_resolution
        started = time.perf_counter()
        times = measure_training(components, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats)
        print(
            f"{preset} on {components.device}, batch {args.batch_size} at {resolution} px, {args.steps} steps x "
            f"{args.repeats} runs per arm ({time.perf_counter() - started:.0f} s): project "
            f"{times.project * 1000:.1f} ms/step, baseline {times.baseline * 1000:.1f} ms/step, "
            f"speed-up {times.speedup:.2f}x",
            flush=True,
        )
        rows.append(speedup_row(preset, times, batch_size=args.batch_size, resolution=resolution))
    write_rows(rows, args.rows)


if __name__ == "__main__":
    main()
