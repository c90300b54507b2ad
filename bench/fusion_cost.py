"""Cost of one generation step: regional, Concept Conductor and styling against plain sampling, side by side.

For N = 1, 2, 3 concepts (each a random rank-4 LoRA on every attention projection, as ED-LoRA has) and one image
with classifier-free guidance (2 UNet rows), it times one denoising step of

- ``plain``: the base UNet alone (no adapter attached, diffusers' SDPA processors) at batch 2: ordinary sampling;
- ``regional``: regional fusion as the service runs it: one forward at batch 2 whose attention layers apply each
  region's LoRA per token and attend to N region prompts (and N negative prompts) inside the regions
  (``core.ml.fusion.regional_attention``); no target (the issue asks only for the ratio);
- ``batched``: Concept Conductor as the service runs it: one forward at batch (N+1)·2, per-row LoRA, up-block
  feature injection (``core.ml.fusion.multipath``). Its FLOPs are N+1 plain steps, so ``batched / plain`` is held
  to ``<= 1.15 · (N+1)``;
- ``sequential``: the same N+1 paths as N+1 forwards at batch 2, switching the active peft adapter between them;
  ``sequential / batched`` is the batching speed-up, held to ``>= 1.5`` at N = 2;
- ``styled``: a styling step (``core.ml.styling.pipeline``): the ControlNet forward plus the UNet forward with the
  IP-Adapter's processors and the ControlNet residuals, at batch 2;
- ``reference`` (N = 2 only): a denoising step the way the Concept Conductor reference code takes it: per concept
  a deep copy of the UNet, its LoRA merged into the copy's state dict and loaded, a forward, ``gc.collect()``; then
  the base UNet; autograd anomaly detection on (the reference turns it on at import).

Arms take turns within each round (order reversed every other round, so drift on a shared machine hits every arm
alike); each figure is the median over rounds of the mean step time of a few steps after a warm-up step.
Conductor's layout-guidance and refinement steps are not in the per-step figures; the full-image line below has
them.

Sizes: the ``tiny`` preset at 64 px always (the rows named ``generation.*``); in the default run also an SD 1.5-shaped
UNet with random weights (``bench.sd15``) at ``--sd15-side`` px (64 by default: the real architecture on an 8×8
latent), N = 2 only, when a probe forward says it fits ``--budget`` (rows ``generation.sd15.*``). On a CPU both sizes
are dominated by per-op overhead and by reading weights rather than by FLOPs, so batching gets more than its FLOP
share for free there; the FLOP-bound case is the GPU (``bench/gpu.py``).

The reference code samples 200 steps; the service samples 50 for SD 1.5 (its generation default; step windows
for guidance and refinement are fractions of the trajectory, so 50 steps cover the same part of it). The run
prints the time of one full 2-concept Conductor image at 50 steps (guidance and refinement included) next to the
reference's settings and its measured per-step cost.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.fusion_cost [--quick] [--rows FILE] [--no-sd15] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import UNet2DConditionModel

from bench.fusion_arms import Styling, measure, prepare_styling, sync
from bench.fusion_rows import cost_rows, print_costs, reference_line
from bench.fusion_sd15 import sd15_fits, sd15_styling
from bench.rows import add_rows_argument, format_table, write_rows
from bench.sd15 import random_edlora, sd15_components
from core.ml.components import SDComponents, load_components
from core.ml.fusion.conductor import generate_conductor
from core.ml.fusion.request import ConceptPlacement, SamplingRequest
from core.ml.styling.weights import load_styling_weights

OUR_STEPS = 50  # the service's SD 1.5 generation default (core.config)


def image_seconds(components: SDComponents, steps: int) -> float:
    """Wall seconds of one 2-concept Conductor image at the default config (guidance and refinement included)."""
    side = components.default_resolution
    placements = [
        ConceptPlacement(random_edlora(components, name, word, seed=i))
        for i, (name, word) in enumerate((("bench-dog", "dog"), ("bench-cat", "cat")))
    ]

    def image(count: int) -> None:
        request = SamplingRequest.create(
            prompt="a <bench-dog> and a <bench-cat> on the beach",
            placements=placements,
            width=side,
            height=side,
            num_inference_steps=count,
            guidance_scale=7.5,
            seed=0,
        )
        generate_conductor(components, request)

    image(2)  # warm-up
    sync(components.device)
    started = time.perf_counter()
    image(steps)
    sync(components.device)
    return time.perf_counter() - started


def _tiny_styling(components: SDComponents, models_root: Path) -> Callable[[UNet2DConditionModel], Styling]:
    """Builds the styling parts for an adapter-free tiny-preset UNet tree from the tiny styling weights."""
    weights = load_styling_weights("tiny", models_root, device=components.device, dtype=components.dtype)
    embed_dim = int(weights.image_encoder.config.projection_dim)
    return lambda unet: prepare_styling(
        components, unet, weights.ip_adapter_root, weights.controlnet("canny"), embed_dim
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-sd15", action="store_true", help="tiny preset only")
    parser.add_argument("--sd15-side", type=int, default=64, help="image side for the SD 1.5-shaped UNet")
    parser.add_argument("--budget", type=float, default=110.0, help="seconds the whole run may take (SD 1.5 part)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--models-root", type=Path, default=Path(".models"))
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    components = load_components("tiny", args.models_root, device=args.device, dtype=dtype)
    tiny = measure(
        components,
        label="tiny preset",
        side=64,
        concepts=(1, 2, 3),
        rounds=3 if args.quick else 7,
        steps=2 if args.quick else 3,
        styling=_tiny_styling(components, args.models_root),
        reference=True,
    )
    print_costs(tiny, threads)
    rows = cost_rows(tiny, "generation", "tiny preset")
    steps = 10 if args.quick else OUR_STEPS
    seconds = image_seconds(components, steps)
    print("\n" + reference_line(tiny, steps, seconds))
    if not args.quick and not args.no_sd15:
        with tempfile.TemporaryDirectory(prefix="tessera-fusion-cost-") as tmp:
            sd15 = sd15_components(Path(tmp), device=args.device, dtype=dtype)
            left = args.budget - (time.perf_counter() - started)
            fits, probe = sd15_fits(sd15, args.sd15_side, left)
            if fits:
                costs = measure(
                    sd15,
                    label="SD 1.5-shaped UNet (random weights)",
                    side=args.sd15_side,
                    concepts=(2,),
                    rounds=2,
                    steps=1,
                    styling=sd15_styling(sd15, Path(tmp)),
                    reference=False,
                )
                print_costs(costs, threads)
                rows += cost_rows(costs, "generation.sd15", "SD 1.5-shaped UNet")
            else:
                print(
                    f"\nSD 1.5-shaped UNet at {args.sd15_side} px skipped: a plain forward took {probe:.1f} s, the "
                    f"arms would not fit the {left:.0f} s left of --budget {args.budget:.0f} s"
                )
    print(f"\n{time.perf_counter() - started:.0f} s in all\n")
    print(format_table(rows))
    write_rows(rows, args.rows)


if __name__ == "__main__":
    main()
