"""The styling stage on the tiny preset: IP-Adapter block scales, control maps, determinism, cancel, clean-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from core.errors import JobCanceledError, ModelLoadError
from core.ml.components import SDComponents
from core.ml.styling.control import control_map
from core.ml.styling.pipeline import style_images
from core.ml.styling.scales import check_scale_config, ip_adapter_scales
from core.ml.styling.weights import StylingWeights, load_styling_weights
from core.progress import Progress
from tests.core.ml.conftest import square_image


@pytest.fixture(scope="module")
def styling(components: SDComponents, models_root: Path) -> StylingWeights:
    return load_styling_weights("tiny", models_root)


def _style(components: SDComponents, styling: StylingWeights, **overrides: Any) -> list[PIL.Image.Image]:
    arguments: dict[str, Any] = {
        "prompt": "a photo of a dog and a cat",
        "negative_prompt": "blurry",
        "style_image": square_image((20, 200, 20), 4),
        "seeds": [3],
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        **overrides,
    }
    images = overrides.pop("images", [square_image((200, 40, 40), 0)])
    arguments.pop("images", None)
    return style_images(components, styling, images, **arguments)


def _ip_scales(components: SDComponents) -> dict[str, float]:
    return {
        name: float(p.scale[0])
        for name, p in components.unet.attn_processors.items()
        if isinstance(p, IPAdapterAttnProcessor2_0)
    }


@pytest.mark.parametrize("mode", ["style", "style_and_layout"])
def test_ip_adapter_only_scales_the_modes_blocks(
    components: SDComponents, styling: StylingWeights, mode: str, unchanged: Callable[[], None]
) -> None:
    seen: list[dict[str, float]] = []
    _style(components, styling, mode=mode, scale=0.8, on_step=lambda _: seen.append(_ip_scales(components)))
    assert len(seen) == 2
    scales = seen[0]
    # Tiny has cross-attention in down_blocks.0, the mid block and up_blocks.1 (2 layers), like SD 1.5's layout.
    assert len(scales) == 4
    wanted = ("up_blocks.1.",) if mode == "style" else ("up_blocks.1.", "down_blocks.0.", "mid_block.")
    assert {n: s for n, s in scales.items() if n.startswith(wanted)} and all(
        s == (0.8 if n.startswith(wanted) else 0.0) for n, s in scales.items()
    )
    unchanged()


def test_scale_config_names_must_exist(components: SDComponents) -> None:
    assert ip_adapter_scales(components.unet, "style", 1.0) == {"up": {"block_1": 1.0}}
    # up_blocks.0 has no attention (as in SD 1.5): diffusers would silently set every layer to 0.
    for bad in ({"up": {"block_0": 1.0}}, {"up": {"block_7": 1.0}}, {"middle": 1.0}, {"up": {"block_1": [1.0] * 3}}):
        with pytest.raises(ValueError, match="IP-Adapter scale"):
            check_scale_config(components.unet, bad)


def test_same_seed_same_pixels_and_the_style_image_matters(components: SDComponents, styling: StylingWeights) -> None:
    first = _style(components, styling, images=[square_image((200, 40, 40), 0)] * 2, seeds=[3, 4])
    again = _style(components, styling, images=[square_image((200, 40, 40), 0)] * 2, seeds=[3, 4])
    assert [i.size for i in first] == [(64, 64)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))
    other_style = _style(components, styling, style_image=square_image((250, 250, 10), 8))
    assert not np.array_equal(np.asarray(other_style[0]), np.asarray(first[0]))
    assert styling.cached_embeds() == 2


def test_cancel_during_styling_stops_within_a_step(
    components: SDComponents, styling: StylingWeights, unchanged: Callable[[], None]
) -> None:
    reports: list[Progress] = []

    def cancel(progress: Progress) -> None:
        reports.append(progress)
        raise JobCanceledError("canceled")

    with pytest.raises(JobCanceledError):
        _style(components, styling, num_inference_steps=4, on_step=cancel, control_type="softedge")
    assert reports == [Progress("styling", 1, 4)]
    unchanged()


def test_control_maps_follow_the_structure() -> None:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[16:48, 16:48] = 220
    image = PIL.Image.fromarray(pixels)
    canny = np.asarray(control_map(image, "canny"))[..., 0] > 0
    assert canny[16:48, 15:17].any() and canny[16:48, 47:49].any()
    assert not canny[:10].any() and not canny[24:40, 24:40].any()
    soft = np.asarray(control_map(image, "softedge"))[..., 0].astype(int)
    assert soft[32, 16] > soft[32, 32] and soft[32, 16] > soft[32, 2]
    depth = np.asarray(control_map(image, "depth"))[..., 0].astype(int)
    assert depth[60, 5] > depth[3, 5]
    assert {control_map(image, k).size for k in ("canny", "softedge", "depth")} == {(64, 64)}


def test_a_preset_without_styling_weights_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'shapes' has no styling weights"):
        load_styling_weights("shapes", tmp_path)
