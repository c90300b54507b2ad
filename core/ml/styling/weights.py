"""The styling stage's weights: an IP-Adapter (with its CLIP image encoder) and one ControlNet per control type.

Layout in a preset folder (what ``tessera models pull sd15`` writes, ``core.ml.pull``; ``tiny`` builds the same
layout with tiny random weights on first use, ``core.ml.tiny.write_tiny_styling``)::

    ip-adapter/models/ip-adapter_sd15.safetensors     h94/IP-Adapter, plain SD 1.5 adapter (4 image tokens)
    ip-adapter/models/image_encoder/                  CLIPVisionModelWithProjection (OpenCLIP ViT-H/14 for sd15)
    controlnet/{canny,softedge,depth}/                ControlNet 1.1 in diffusers format

The IP-Adapter weights are read by diffusers' ``load_ip_adapter`` from that folder each time the stage runs (it
installs them into the shared UNet and they are unloaded after); the image encoder and the ControlNets are loaded
once, lazily, and kept. Style-image embeddings are cached per image content.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from diffusers import ControlNetModel
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from core.config import PRESETS_WITHOUT_STYLING
from core.errors import ModelLoadError
from core.ml.components import preset_dir
from core.ml.styling.control import ControlType
from core.ml.tiny import write_tiny_styling

logger = logging.getLogger(__name__)

IP_ADAPTER_FOLDER = "ip-adapter"
IP_ADAPTER_SUBFOLDER = "models"
IP_ADAPTER_WEIGHTS = "ip-adapter_sd15.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"
CONTROLNET_FOLDER = "controlnet"


@dataclass
class StylingWeights:
    """The loaded image encoder, the IP-Adapter's location and the ControlNets, for one preset on one device.

    ControlNets load on first use of their type (``controlnet(kind)``); style embeddings are cached (at most
    ``cache_size`` style images).
    """

    folder: Path
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    device: torch.device
    dtype: torch.dtype
    cache_size: int = 32
    _controlnets: dict[str, ControlNetModel] = field(default_factory=dict)
    _embeds: OrderedDict[str, torch.Tensor] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ip_adapter_root(self) -> Path:
        """The folder ``load_ip_adapter`` reads (``subfolder=models``, ``weight_name=ip-adapter_sd15.safetensors``)."""
        return self.folder / IP_ADAPTER_FOLDER

    def controlnet(self, kind: ControlType) -> ControlNetModel:
        """The ControlNet for ``kind``, loaded from ``controlnet/<kind>/`` on first use.

        Raises:
            ModelLoadError: its folder is missing or does not load.
        """
        with self._lock:
            if kind not in self._controlnets:
                path = self.folder / CONTROLNET_FOLDER / kind
                try:
                    model = ControlNetModel.from_pretrained(path, local_files_only=True, torch_dtype=self.dtype)
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(
                        f"ControlNet {kind!r} is missing or broken at {path}: {exc}; "
                        "run `tessera models pull` for this preset"
                    ) from exc
                model.requires_grad_(False)
                self._controlnets[kind] = model.eval().to(self.device)
            return self._controlnets[kind]

    @torch.no_grad()
    def style_embeds(self, image: PIL.Image.Image) -> torch.Tensor:
        """CLIP image embedding of a style image, ``[1, 1, projection_dim]``, cached by the image's pixels."""
        rgb = image.convert("RGB")
        key = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
        with self._lock:
            if key in self._embeds:
                self._embeds.move_to_end(key)
                return self._embeds[key]
        pixels = self.feature_extractor(images=rgb, return_tensors="pt").pixel_values
        embeds: torch.Tensor = self.image_encoder(pixels.to(self.device, self.dtype)).image_embeds[:, None]  # [1,1,D]
        with self._lock:
            self._embeds[key] = embeds
            while len(self._embeds) > self.cache_size:
                self._embeds.popitem(last=False)
        return embeds

    def cached_embeds(self) -> int:
        """How many style embeddings are cached."""
        return len(self._embeds)


def load_styling_weights(
    preset: str,
    models_root: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StylingWeights:
    """Load the image encoder of ``preset`` and check the IP-Adapter file is in place (ControlNets load lazily).

    Raises:
        ModelLoadError: a file or folder is missing (the message names it and the command that makes it).
    """
    if preset in PRESETS_WITHOUT_STYLING:
        raise ModelLoadError(f"the model preset {preset!r} has no styling weights (IP-Adapter, ControlNet)")
    folder = preset_dir(preset, models_root)
    if preset == "tiny":
        write_tiny_styling(folder)
    weights = folder / IP_ADAPTER_FOLDER / IP_ADAPTER_SUBFOLDER / IP_ADAPTER_WEIGHTS
    encoder_dir = folder / IP_ADAPTER_FOLDER / IP_ADAPTER_SUBFOLDER / IMAGE_ENCODER_FOLDER
    if not weights.is_file():
        raise ModelLoadError(f"IP-Adapter weights are missing at {weights}; run `tessera models pull {preset}`")
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"IP-Adapter image encoder is missing or broken at {encoder_dir}: {exc}; "
            f"run `tessera models pull {preset}`"
        ) from exc
    encoder.requires_grad_(False)
    torch_device = torch.device(device)
    side = int(encoder.config.image_size)
    logger.info("loaded the styling image encoder of preset %s from %s", preset, encoder_dir)
    return StylingWeights(
        folder=folder,
        image_encoder=encoder.eval().to(torch_device),
        feature_extractor=CLIPImageProcessor(size=side, crop_size=side),
        device=torch_device,
        dtype=dtype,
    )
