"""IP-Adapter scales per attention block (InstantStyle), checked against the UNet they are meant for.

diffusers' ``set_ip_adapter_scale`` expands ``{"up": {"block_1": 1.0}}`` over the blocks that have attention and
sets every other layer to 0. A block without attention (SD 1.5's ``up_blocks.0``) or a misspelt key is silently
skipped, which turns IP-Adapter off everywhere; ``check_scale_config`` makes that an error instead.

Blocks are found by position, so the same modes hold for SD 1.5 and the tiny preset: the *style* block is the
lowest-resolution up block with attention (``up_blocks.1`` in SD 1.5: InstantStyle's SD 1.5 style block); the
*layout* blocks are the lowest-resolution down block with attention and the mid block (``down_blocks.2`` + mid in
SD 1.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from diffusers import UNet2DConditionModel

StyleMode = Literal["style", "style_and_layout"]
ScaleConfig = dict[str, float | dict[str, float | list[float]]]


def _blocks_with_attention(unet: UNet2DConditionModel, side: str) -> list[int]:
    blocks = unet.down_blocks if side == "down" else unet.up_blocks
    return [i for i, block in enumerate(blocks) if hasattr(block, "attentions")]


def ip_adapter_scales(unet: UNet2DConditionModel, mode: StyleMode, scale: float) -> ScaleConfig:
    """The ``set_ip_adapter_scale`` config for ``mode`` at ``scale``; everything else stays at 0.

    Returns:
        e.g. ``{"up": {"block_1": 1.0}}`` (style) or ``{"up": {"block_1": 1.0}, "down": {"block_2": 1.0},
        "mid": 1.0}`` (style and layout) for SD 1.5.
    """
    config: ScaleConfig = {"up": {f"block_{_blocks_with_attention(unet, 'up')[0]}": scale}}
    if mode == "style_and_layout":
        config["down"] = {f"block_{_blocks_with_attention(unet, 'down')[-1]}": scale}
        config["mid"] = scale
    check_scale_config(unet, config)
    return config


def check_scale_config(unet: UNet2DConditionModel, config: Mapping[str, object]) -> None:
    """Refuse a scale config that names a part of the UNet that has no attention to scale.

    Raises:
        ValueError: an unknown top-level key, a block that does not exist or has no attention, or a per-layer list
            of the wrong length; the message names the key and what the UNet has.
    """
    per_block = {"down": int(unet.config.layers_per_block), "up": int(unet.config.layers_per_block) + 1}
    for side, value in config.items():
        if side == "mid":
            if isinstance(value, dict) or unet.mid_block is None or not hasattr(unet.mid_block, "attentions"):
                raise ValueError("IP-Adapter scale 'mid' must be a number and the UNet's mid block needs attention")
            continue
        if side not in per_block:
            raise ValueError(f"IP-Adapter scale key {side!r} is not one of 'down', 'mid', 'up'")
        if not isinstance(value, dict):
            continue
        valid = [f"block_{i}" for i in _blocks_with_attention(unet, side)]
        for block, scales in value.items():
            if block not in valid:
                raise ValueError(
                    f"IP-Adapter scale {side}.{block} names no block with attention; this UNet's {side} blocks "
                    f"with attention are {valid}"
                )
            if isinstance(scales, list) and len(scales) not in (1, per_block[side]):
                raise ValueError(
                    f"IP-Adapter scale {side}.{block} needs 1 or {per_block[side]} values, got {len(scales)}"
                )
