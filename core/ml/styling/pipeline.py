"""The styling stage: stage-1 images restyled after a reference image, their structure held by a ControlNet.

InstantStyle's recipe on SD 1.5 (ml-methods §4.6): diffusers' ``StableDiffusionControlNetPipeline`` built around
the shared base components (no copies: the pipeline object only references them), the plain IP-Adapter loaded with
``load_ip_adapter`` from the preset's folder and scaled only in the style block (``mode="style"``) or also in the
layout blocks (``"style_and_layout"``), and a ControlNet conditioned on a control map of each stage-1 image. It
runs on the base UNet: the ED-LoRA adapters and processors of stage 1 are gone by then (IP-Adapter and ED-LoRA
both own ``attn2``). The IP-Adapter is unloaded and the UNet's original processors put back in a ``finally``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from core.errors import InvalidRequestError
from core.ml.components import SDComponents
from core.ml.prompts import Prompt
from core.ml.styling.control import ControlType, control_map
from core.ml.styling.scales import StyleMode, ip_adapter_scales
from core.ml.styling.weights import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS, StylingWeights
from core.progress import Progress, StepCallback, no_progress

logger = logging.getLogger(__name__)


def controlnet_pipeline(
    components: SDComponents,
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    scheduler: SchedulerMixin,
) -> StableDiffusionControlNetPipeline:
    """diffusers' ControlNet pipeline over the preset's text encoder and VAE with ``unet``, ``controlnet`` and
    ``scheduler`` (no safety checker, no image encoder: the style image's embedding is passed in), quiet."""
    pipe = StableDiffusionControlNetPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=unet,
        controlnet=controlnet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_style_adapter(pipe: StableDiffusionControlNetPipeline, ip_root: Path, mode: StyleMode, scale: float) -> None:
    """Load the IP-Adapter at ``ip_root`` into ``pipe``'s UNet, scaled for ``mode`` (``ip_adapter_scales``)."""
    pipe.load_ip_adapter(
        str(ip_root),
        subfolder=IP_ADAPTER_SUBFOLDER,
        weight_name=IP_ADAPTER_WEIGHTS,
        image_encoder_folder=None,
        local_files_only=True,
    )
    pipe.set_ip_adapter_scale(ip_adapter_scales(pipe.unet, mode, scale))


def style_images(
    components: SDComponents,
    weights: StylingWeights,
    images: Sequence[PIL.Image.Image],
    *,
    prompt: Prompt | str,
    negative_prompt: Prompt | str,
    style_image: PIL.Image.Image,
    mode: StyleMode = "style",
    scale: float = 1.0,
    control_type: ControlType = "canny",
    control_scale: float = 0.6,
    num_inference_steps: int = 30,
    guidance_scale: float = 5.0,
    seeds: Sequence[int],
    on_step: StepCallback = no_progress,
) -> list[PIL.Image.Image]:
    """Restyle each image after ``style_image``, keeping its structure through a ``control_type`` ControlNet.

    Args:
        images: the stage-1 images, all the same size (multiples of 8).
        prompt, negative_prompt: the stage-1 request's parsed prompts, each concept written as its class word (the
            base UNet has no ED-LoRA); or plain text, used as is.
        style_image: the reference; its CLIP embedding is cached in ``weights``.
        mode, scale: IP-Adapter injection blocks and strength (``core.ml.styling.scales``).
        control_type, control_scale: the control map and ``controlnet_conditioning_scale``.
        num_inference_steps, guidance_scale: of the styling sampler (DPM-Solver++ from the preset's config).
        seeds: one per image; the same seeds give the same pixels.
        on_step: gets ``Progress("styling", i, total)`` after each step; raising stops the stage.

    Returns:
        one RGB image per input, same size.

    Raises:
        InvalidRequestError: no images, mismatched seeds or sizes.
        ModelLoadError: the ControlNet for ``control_type`` is missing.
        JobCanceledError: raised by ``on_step``; the UNet is left as it was.
    """
    if not images or len(seeds) != len(images):
        raise InvalidRequestError(f"need one seed per image, got {len(seeds)} for {len(images)}", field="seed")
    width, height = images[0].size
    if any(i.size != (width, height) for i in images):
        raise InvalidRequestError("stage-1 images must all have the same size", field="images")
    if isinstance(prompt, Prompt):
        prompt = prompt.class_word_text()
    if isinstance(negative_prompt, Prompt):
        negative_prompt = negative_prompt.class_word_text(field="negative_prompt")
    unet = components.unet
    controlnet = weights.controlnet(control_type)
    pipe = controlnet_pipeline(
        components, unet, controlnet, type(components.scheduler).from_config(components.scheduler.config)
    )
    controls = [control_map(image, control_type) for image in images]
    embeds = weights.style_embeds(style_image)  # [1, 1, D]
    count = len(images)
    # diffusers takes [negative; positive] stacked and chunks them; the plain adapter's negative is zeros.
    ip_embeds = torch.cat([torch.zeros_like(embeds)] * count + [embeds] * count)  # [2·count, 1, D]
    if guidance_scale <= 1.0:
        ip_embeds = torch.cat([embeds] * count)

    def report(_pipe: Any, i: int, _t: Any, _kwargs: dict[str, Any]) -> dict[str, Any]:
        on_step(Progress("styling", i + 1, num_inference_steps))
        return {}

    originals = unet.attn_processors
    try:
        load_style_adapter(pipe, weights.ip_adapter_root, mode, scale)
        with torch.no_grad():
            output = pipe(
                prompt=[prompt] * count,
                negative_prompt=[negative_prompt] * count,
                image=controls,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                ip_adapter_image_embeds=[ip_embeds],
                controlnet_conditioning_scale=control_scale,
                callback_on_step_end=report,
                output_type="pil",
            )
    finally:
        pipe.unload_ip_adapter()
        # unload_ip_adapter installs fresh default processors; the shared UNet gets its own objects back. It also
        # leaves `encoder_hid_proj` registered as an empty submodule slot: make it the plain None attribute again.
        unet.set_attn_processor(originals)
        if "encoder_hid_proj" in unet._modules:
            delattr(unet, "encoder_hid_proj")
            unet.encoder_hid_proj = None
    result: list[PIL.Image.Image] = list(output.images)
    logger.info("styled %d image(s) %dx%d (%s, %s control)", count, width, height, mode, control_type)
    return result
