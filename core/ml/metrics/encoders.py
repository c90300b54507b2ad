"""The frozen image and text encoders the evaluation metrics embed with, loaded from a local folder.

Layout of the encoders root (DESIGN.md lists both encoders in the ``sd15`` model set, so its preset folder can serve
as the root; ``tessera models pull`` fetches them, ``core.ml.metrics.tiny`` writes a toy copy)::

    <root>/
      clip-vit-b32/    openai/clip-vit-base-patch32: config.json, weights, tokenizer files, preprocessor_config.json
      dino-vits16/     facebook/dino-vits16 (DINO v1, a ``ViTModel``): config.json, weights, preprocessor_config.json

Pixels follow the protocol's torchvision transforms on PIL images (Custom Diffusion ``evaluate.py``): CLIP
``Resize(224, bicubic) → CenterCrop(224)``, DINO ``Resize(256, bicubic) → CenterCrop(224)``, then ``ToTensor`` and
the model's mean/std.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer, ViTImageProcessor, ViTModel

from core.errors import ModelLoadError

logger = logging.getLogger(__name__)

CLIP_FOLDER = "clip-vit-b32"
DINO_FOLDER = "dino-vits16"

# DINO's evaluation transform resizes the short side to 256 before a 224 crop; models of another input size
# (the tiny one) keep the same ratio.
_DINO_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class ImageTransform:
    """Short side resized to ``resize`` (PIL bicubic), centre crop ``crop``×``crop``, scaled to [0, 1], normalised.

    # compat: transformers 5 image processors resize tensors with torchvision rather than PIL, which moves scores by
    # about 1e-3; published numbers come from PIL-resized images, so only the constants are read from the processor.
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """``B`` images of any size and mode → ``[B, 3, crop, crop]`` float32 on the CPU."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return torch.stack([(self._crop(image) - mean) / std for image in images])

    def _crop(self, image: PIL.Image.Image) -> torch.Tensor:
        rgb = image.convert("RGB")
        width, height = rgb.size
        # Same size rule as torchvision's Resize(int): the long side is truncated, not rounded.
        if width <= height:
            size = (self.resize, int(self.resize * height / width))
        else:
            size = (int(self.resize * width / height), self.resize)
        resized = rgb.resize(size, resample=PIL.Image.Resampling.BICUBIC)
        # torchvision's CenterCrop rounds the offsets.
        left = round((size[0] - self.crop) / 2)
        top = round((size[1] - self.crop) / 2)
        cropped = resized.crop((left, top, left + self.crop, top + self.crop))
        array = np.asarray(cropped, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)


@dataclass(frozen=True)
class CLIPEncoder:
    """CLIP with its tokenizer and image transform; ``model`` is frozen and in eval mode."""

    model: CLIPModel
    tokenizer: CLIPTokenizer
    transform: ImageTransform


@dataclass(frozen=True)
class DINOEncoder:
    """A DINO ViT (CLS token features) with its image transform; ``model`` is frozen and in eval mode."""

    model: ViTModel
    transform: ImageTransform


@dataclass(frozen=True)
class EvalEncoders:
    """Both encoders the evaluation protocol needs (CLIP-T and CLIP-I use ``clip``, DINO uses ``dino``)."""

    clip: CLIPEncoder
    dino: DINOEncoder


def _model_folder(root: Path, name: str) -> Path:
    folder = Path(root) / name
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"evaluation encoder folder {folder} is missing or has no config.json; "
            "run `tessera models pull` to fetch the CLIP ViT-B/32 and DINO ViT-S/16 weights (part of the sd15 set)"
        )
    return folder


def _as_triple(values: Sequence[float]) -> tuple[float, float, float]:
    first, second, third = (float(v) for v in values)
    return first, second, third


def _freeze(model: torch.nn.Module, device: torch.device) -> None:
    model.requires_grad_(False)
    model.eval()
    model.to(device)


def load_clip(folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> CLIPEncoder:
    """Load CLIP, its tokenizer and its image constants from a local folder (``local_files_only``).

    Raises:
        ModelLoadError: a file is missing or does not load.
    """
    try:
        model = CLIPModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load CLIP from {folder}: {exc}") from exc
    _freeze(model, torch.device(device))
    transform = ImageTransform(
        resize=int(processor.size["shortest_edge"]),
        crop=int(processor.crop_size["height"]),
        mean=_as_triple(processor.image_mean),
        std=_as_triple(processor.image_std),
    )
    return CLIPEncoder(model=model, tokenizer=tokenizer, transform=transform)


def load_dino(folder: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DINOEncoder:
    """Load a DINO ViT and its normalisation constants from a local folder (``local_files_only``).

    The checkpoint has no pooler (DINO's feature is the normalised CLS token), so none is built.

    Raises:
        ModelLoadError: a file is missing or does not load.
    """
    try:
        model = ViTModel.from_pretrained(folder, add_pooling_layer=False, dtype=dtype, local_files_only=True)
        processor = ViTImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load DINO from {folder}: {exc}") from exc
    _freeze(model, torch.device(device))
    crop = int(model.config.image_size)
    transform = ImageTransform(
        resize=round(crop * _DINO_RESIZE_RATIO),
        crop=crop,
        mean=_as_triple(processor.image_mean),
        std=_as_triple(processor.image_std),
    )
    return DINOEncoder(model=model, transform=transform)


def load_eval_encoders(
    root: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> EvalEncoders:
    """Load CLIP ViT-B/32 from ``root/clip-vit-b32`` and DINO ViT-S/16 from ``root/dino-vits16``.

    Args:
        root: the encoders root (layout in the module docstring).
        device: where both models run.
        dtype: weight dtype; fp32 (the default) is what published numbers were computed in.

    Raises:
        ModelLoadError: a folder is missing (the message names it and ``tessera models pull``) or fails to load.
    """
    clip_folder = _model_folder(root, CLIP_FOLDER)
    dino_folder = _model_folder(root, DINO_FOLDER)
    encoders = EvalEncoders(
        clip=load_clip(clip_folder, device=device, dtype=dtype),
        dino=load_dino(dino_folder, device=device, dtype=dtype),
    )
    logger.info("loaded evaluation encoders from %s on %s (%s)", root, device, dtype)
    return encoders


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a model's first parameter (inputs are moved there)."""
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype
