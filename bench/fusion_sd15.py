"""The generation-cost benchmark's SD 1.5-shaped part: the styling parts built for the SD 1.5-shaped UNet
(random IP-Adapter and ControlNet, ``bench.sd15``) and the probe that says whether its arms fit the budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import UNet2DConditionModel

from bench.fusion_arms import Styling, prepare_styling, sync
from bench.sd15 import SD15_IMAGE_EMBED_DIM, sd15_controlnet, write_ip_adapter
from core.ml.components import SDComponents


def sd15_styling(components: SDComponents, workdir: Path) -> Callable[[UNet2DConditionModel], Styling]:
    """Builds the styling parts for an adapter-free SD 1.5-shaped UNet tree (IP-Adapter files under ``workdir``)."""

    def build(unet: UNet2DConditionModel) -> Styling:
        root = write_ip_adapter(unet, workdir, SD15_IMAGE_EMBED_DIM)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            controlnet = sd15_controlnet(unet).to(components.device, components.dtype).eval().requires_grad_(False)
        return prepare_styling(components, unet, root, controlnet, SD15_IMAGE_EMBED_DIM)

    return build


def sd15_fits(components: SDComponents, side: int, seconds_left: float) -> tuple[bool, float]:
    """Whether the SD 1.5-shaped arms fit in ``seconds_left``, from one probe forward; and the probe's seconds.

    Estimate: per round, plain 1 + batched N=2 ~3 (FLOP-bound; less when overhead-bound) + sequential 3 + styled
    ~1.5 plain steps, each arm run twice a round (warm-up + one timed step), two rounds, plus the ControlNet build.
    """
    unet, device, dtype = components.unet, components.device, components.dtype
    latent = side // 8
    x = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
    states = torch.randn(2, 77, int(unet.config.cross_attention_dim), device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=states)
        sync(device)
        started = time.perf_counter()
        unet(x, t, encoder_hidden_states=states)
        sync(device)
        probe = time.perf_counter() - started
    estimate = probe * (1 + 3 + 3 + 1.5) * 2 * 2 + 10
    return estimate <= seconds_left, probe
