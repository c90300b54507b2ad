"""Cost of one fusion denoising step: regional and Concept Conductor against plain sampling.

For N = 1, 2, 3 concepts (each a random rank-4 LoRA on every attention projection, as ED-LoRA has) and the same
image batch B with classifier-free guidance, it times one UNet step of

- ``plain``: the base UNet alone at batch 2B (what ordinary sampling costs per step);
- ``regional``: regional fusion as the service runs it: one forward at batch 2B whose attention layers apply each
  region's LoRA per token and attend to N region prompts inside the regions (``core.ml.fusion.regional_attention``;
  the ideal is about 1x plain, the extra being N low-rank products per projection and N cross-attentions per layer);
- ``batched``: Concept Conductor as the service runs it: one forward at batch (N+1)·2B, per-row LoRA through peft's
  ``adapter_names``, up-block feature injection (``core.ml.fusion.multipath``);
- ``sequential``: the same N+1 paths as N+1 forwards at batch 2B, switching the active peft adapter between them
  (already cheaper than the reference code, which deep-copies the UNet and re-merges LoRA per path and step).

and prints per-step milliseconds, ``regional / plain``, ``batched / plain`` (the ideal is N+1: the FLOP ratio),
``sequential / batched`` (the batching speed-up; target >= 1.5x for N = 2) and Conductor's peak memory (CUDA:
``max_memory_allocated``; CPU: growth of the process's max RSS, a coarse upper bound). Conductor's layout-guidance
and refinement steps are not included.

    .venv/bin/python -m bench.fusion_cost [--full] [--side 256] [--batch 1] [--repeats 3] [--device cpu]

``tiny`` always runs; ``--full`` adds an SD 1.5-shaped UNet with random weights (860 M parameters) at ``--side``
pixels, which on a small CPU takes minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import UNet2DConditionModel

from core.ml.components import load_components
from core.ml.edlora.attention import cross_attention_layer_names, layerwise_cross_attention
from core.ml.edlora.lora import UNET_TARGETS, activate_lora, add_lora, lora_scope
from core.ml.fusion.multipath import MultipathState, multipath_attention, path_adapter_names
from core.ml.fusion.regional_attention import RegionalState, regional_attention

Step = Callable[[], object]


def _time(step: Step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _attach(unet: UNet2DConditionModel, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"bench_{i}"
        add_lora(unet, name, rank=4, targets=UNET_TARGETS, multiplier=0.7)
        for n, p in unet.named_parameters():
            if f"lora_B.{name}." in n:
                torch.nn.init.normal_(p, std=0.01)  # peft starts B at zero; a real adapter is not a no-op
        names.append(name)
    return names


def measure(unet: UNet2DConditionModel, *, label: str, side: int, batch: int, repeats: int) -> None:
    device, dtype = unet.device, unet.dtype
    latent = side // 8
    layers = len(cross_attention_layer_names(unet))
    dim = int(unet.config.cross_attention_dim)
    rows = 2 * batch
    x = torch.randn(rows, 4, latent, latent, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    context = torch.randn(1, layers, 77, dim, device=device, dtype=dtype)
    print(f"\n{label}: {side}x{side} px, B={batch} (CFG batch {rows}), device {device}, {dtype}")
    with torch.no_grad(), lora_scope(unet):
        with layerwise_cross_attention(unet):
            plain = _time(lambda: unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1)), repeats)
        print(f"  plain                 {plain:9.1f} ms/step")
        adapters = _attach(unet, 3)
        for n in (1, 2, 3):
            paths: list[str | None] = [None, *adapters[:n]]
            masks = torch.zeros(n, batch, latent, latent, device=device)
            for k in range(n):
                masks[k, :, :, k * latent // n : (k + 1) * latent // n] = 1
            regions = RegionalState(list(adapters[:n]), masks[:, 0], context.expand(n, -1, -1, -1), cfg=True)
            with regional_attention(unet, regions):
                regional = _time(lambda: unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1)), repeats)
            state = MultipathState(paths=n + 1, adapter_names=path_adapter_names(paths, rows), masks=masks, cfg=True)
            states = context.expand(rows * (n + 1), -1, -1, -1)
            xs = x.repeat(n + 1, 1, 1, 1)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            before = _peak(device)
            with multipath_attention(unet, state):
                batched = _time(lambda: unet(xs, t, encoder_hidden_states=states), repeats)  # noqa: B023
            peak = _peak(device) - (0 if device.type == "cuda" else before)

            def sequential() -> None:
                for adapter in paths:  # noqa: B023
                    activate_lora(unet, adapter, 0.7)
                    unet(x, t, encoder_hidden_states=context.expand(rows, -1, -1, -1))

            with layerwise_cross_attention(unet):
                per_path = _time(sequential, repeats)
            activate_lora(unet, None)
            print(
                f"  N={n} regional {regional:9.1f} ms/step ({regional / plain:4.2f}x plain, ideal ~1x)"
                f" | conductor batched {batched:9.1f} ms/step ({batched / plain:4.2f}x plain, ideal {n + 1}x)"
                f" | sequential {per_path:9.1f} ms/step | batched speed-up {per_path / batched:4.2f}x"
                f" | peak {'+' if device.type != 'cuda' else ''}{peak:.0f} MiB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also an SD 1.5-shaped UNet with random weights")
    parser.add_argument("--side", type=int, default=256, help="image side for the full-size UNet")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--models-root", type=Path, default=Path(".models"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    components = load_components("tiny", args.models_root, device=args.device, dtype=dtype)
    measure(components.unet, label="tiny preset", side=64, batch=args.batch, repeats=max(args.repeats, 10))
    if args.full:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).to(args.device, dtype).eval()
        unet.requires_grad_(False)
        label = "SD 1.5-shaped UNet (random weights)"
        measure(unet, label=label, side=args.side, batch=args.batch, repeats=args.repeats)


if __name__ == "__main__":
    main()
