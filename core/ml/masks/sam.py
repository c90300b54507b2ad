"""Segment Anything (``segment-anything==1.0``): loading the preset's SAM and segmenting a training image with it.

Where each preset's SAM comes from (nothing is downloaded here):

- ``sd15`` (and any operator-provided preset): the ViT-H checkpoint at
  ``<models_root>/<preset>/sam/sam_vit_h_4b8939.pth`` (Meta's file, 2.4 GB; ``tessera models pull`` or a copy by
  hand). It is read with ``torch.load(weights_only=True)``, so a tampered file cannot run code.
- ``tiny``: a small SAM built from the same classes (ViT encoder, prompt encoder, two-way-transformer decoder) with
  seeded random weights, written once to ``<models_root>/tiny/sam/tiny_sam.safetensors``. Its masks are noise, but
  every code path (predictor, automatic generator, prompts) is the real one, so CPU tests exercise them.
- ``shapes``: no SAM; ``ColourSegmenter`` (``core.ml.masks.segmenter``) is exact in that flat-colour world.

Routes: a point prompt runs ``SamPredictor.predict`` with ``multimask_output=True`` and takes the *largest* of the
three masks (a click is ambiguous between a part and the whole; the concept is the whole subject); a box prompt
takes the mask with the highest predicted IoU (a box is not ambiguous); no prompt runs
``SamAutomaticMaskGenerator`` and picks with ``select_concept``. The automatic masks also give the other objects.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from core.errors import ModelLoadError
from core.ml.masks.cleanup import clean_mask
from core.ml.masks.segmenter import (
    ColourSegmenter,
    ConceptMasks,
    MaskSource,
    Segmenter,
    other_objects,
    prompt_in_pixels,
    select_concept,
    whole_image,
)
from core.schemas import MaskPrompt

logger = logging.getLogger(__name__)

VIT_H_CHECKPOINT = "sam_vit_h_4b8939.pth"
TINY_SAM_FILE = "tiny_sam.safetensors"
TINY_SAM_SEED = 0
TINY_IMAGE_SIZE = 64
# SAM's published automatic-generator defaults; the tiny SAM's scores are random, so its thresholds are off.
VIT_H_GENERATOR = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}
TINY_GENERATOR = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def build_tiny_sam() -> Sam:
    """A SAM with SAM's classes at toy size (64 px input, 16-wide), random weights seeded by ``TINY_SAM_SEED``."""
    width, patch = 16, 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SAM_SEED)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=TINY_IMAGE_SIZE,
                patch_size=patch,
                embed_dim=width,
                depth=1,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=width,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=width,
                image_embedding_size=(TINY_IMAGE_SIZE // patch, TINY_IMAGE_SIZE // patch),
                input_image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=width, mlp_dim=32, num_heads=2),
                transformer_dim=width,
                iou_head_depth=1,
                iou_head_hidden_dim=16,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


def _tiny_sam(folder: Path) -> Sam:
    path = folder / TINY_SAM_FILE
    sam = build_tiny_sam()
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tiny_sam-", dir=folder)
        os.close(fd)
        save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, tmp)
        os.replace(tmp, path)  # concurrent builders write identical files; the last rename wins harmlessly
    sam.load_state_dict(load_file(path))
    return sam


def _vit_h_sam(folder: Path) -> Sam:
    path = folder / VIT_H_CHECKPOINT
    if not path.is_file():
        raise ModelLoadError(
            f"SAM checkpoint {path} does not exist; put Meta's {VIT_H_CHECKPOINT} there "
            "(`tessera models pull sd15` fetches it) or upload masks with the training request"
        )
    sam = sam_model_registry["vit_h"](checkpoint=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        sam.load_state_dict(state)
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # weights_only refuses code as UnpicklingError
        raise ModelLoadError(f"could not load SAM checkpoint {path}: {exc}") from exc
    return sam.eval()


class SamSegmenter:
    """Segments with a SAM model through ``SamPredictor`` and ``SamAutomaticMaskGenerator`` (see module docstring)."""

    def __init__(self, sam: Sam, generator_options: dict[str, float | int]) -> None:
        self.predictor = SamPredictor(sam)
        self.generator = SamAutomaticMaskGenerator(sam, **generator_options)

    def segment(self, image: PIL.Image.Image, prompt: MaskPrompt | None) -> ConceptMasks:
        """See ``core.ml.masks.segmenter.Segmenter.segment``."""
        array = np.asarray(image.convert("RGB"))
        candidates = [np.asarray(m["segmentation"], dtype=bool) for m in self.generator.generate(array)]
        source: MaskSource
        if prompt is None:
            index = select_concept(candidates, None)
            if index is None:
                logger.warning("SAM found no concept-sized mask; using the whole image")
                return whole_image(image.size)
            concept, source = candidates[index], "auto"
        else:
            self.predictor.set_image(array)
            coords = prompt_in_pixels(prompt, image.size)
            if prompt.point is not None:
                masks, _, _ = self.predictor.predict(
                    point_coords=coords[None], point_labels=np.array([1]), multimask_output=True
                )
                concept, source = masks[int(np.argmax(masks.reshape(len(masks), -1).sum(axis=1)))], "point"
            else:
                masks, scores, _ = self.predictor.predict(box=coords, multimask_output=True)
                concept, source = masks[int(np.argmax(scores))], "box"
            if not concept.any():
                logger.warning("SAM returned an empty mask for the %s prompt; using the whole image", source)
                return whole_image(image.size)
        concept = clean_mask(np.asarray(concept, dtype=bool))
        return ConceptMasks(concept, other_objects(candidates, concept), source)


def load_segmenter(preset: str, models_root: Path, *, device: str | torch.device = "cpu") -> Segmenter:
    """The segmenter of a preset (see the module docstring for where each one's weights come from).

    Raises:
        ModelLoadError: the preset's SAM checkpoint is missing or unreadable.
    """
    if preset == "shapes":
        return ColourSegmenter()
    folder = Path(models_root) / preset / "sam"
    if preset == "tiny":
        sam, options = _tiny_sam(folder), TINY_GENERATOR
    else:
        sam, options = _vit_h_sam(folder), VIT_H_GENERATOR
    logger.info("loaded SAM for preset %s from %s", preset, folder)
    return SamSegmenter(sam.to(device), options)
