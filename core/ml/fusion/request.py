"""What every fusion method is asked for and answers: concept placements, limits, checks, and the result.

Shared by ``conductor`` and ``regional`` (the service's fusion modes) and ``stacked`` (the naive baseline they are
measured against), so all accept and refuse exactly the same requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import PIL.Image

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.regions import Region
from core.rules import concept_refs

MAX_CONCEPTS = 4
MIN_SIDE, MAX_SIDE = 64, 1024
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_OUTPUTS = 8
MAX_WEIGHT = 2.0
MAX_SEED = 2**63 - 1
# Mix-of-Show samples single concepts at 0.7 (alpha = 1); on the shapes world full strength overshoots a learned
# colour (purple_triangle drew magenta, 0/8 at guidance 4, against 8/8 at 0.7).
DEFAULT_LORA_WEIGHT = 0.7


@dataclass
class ConceptPlacement:
    """One concept in a generation.

    Args:
        weights: the concept's adapter.
        region: normalised box ``(x0, y0, x1, y1)``, a mask image (white = region), or None for the automatic
            side-by-side layout (the None placements share it, in order).
        weight: LoRA strength at inference, relative to training: the LoRA multiplier is ``weight · weights.alpha``
            (``DEFAULT_LORA_WEIGHT`` unless the request says otherwise).
    """

    weights: EDLoRAWeights
    region: Region = None
    weight: float = DEFAULT_LORA_WEIGHT


@dataclass
class GenerationResult:
    """What one generation produced.

    Args:
        images: ``num_outputs`` RGB images of ``width x height``.
        masks: one L-mode ``width x height`` mask per concept: the region it was composed in (latent grid, scaled up).
        seeds: the seed of each image (``seed, seed + 1, …``); that seed alone gives the same image up to float
            rounding of the batched pass (within 1/255 on CPU).
    """

    images: list[PIL.Image.Image]
    masks: list[PIL.Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be within {low}..{high}, got {value}", field=name)


def check_request(
    components: SDComponents,
    prompt: str,
    placements: Sequence[ConceptPlacement],
    width: int,
    height: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    num_outputs: int,
) -> None:
    """Refuse a generation request that breaks a limit or does not fit the loaded model.

    Raises:
        InvalidRequestError: an argument breaks a rule (``field`` names it).
        ModelLoadError: an adapter's embeddings do not fit the text encoder.
    """
    step = components.vae_scale_factor
    for name, side in (("width", width), ("height", height)):
        if side % step or not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidRequestError(
                f"{name} must be a multiple of {step} within {MIN_SIDE}..{MAX_SIDE}, got {side}", field=name
            )
    _check_range("num_inference_steps", num_inference_steps, 1, MAX_STEPS)
    _check_range("guidance_scale", guidance_scale, 0.0, MAX_GUIDANCE)
    _check_range("num_outputs", num_outputs, 1, MAX_OUTPUTS)
    _check_range("seed", seed, 0, MAX_SEED - num_outputs + 1)
    if len(placements) > MAX_CONCEPTS:
        raise InvalidRequestError(
            f"concepts must hold at most {MAX_CONCEPTS}, got {len(placements)}", field="concepts"
        )
    names = [p.weights.concept_name for p in placements]
    if len(set(names)) != len(names):
        raise InvalidRequestError(f"concepts must name each concept once, got {names}", field="concepts")
    referenced = set(concept_refs(prompt))
    hidden = int(components.text_encoder.config.hidden_size)
    for i, placement in enumerate(placements):
        weights = placement.weights
        _check_range(f"concepts[{i}].weight", placement.weight, 0.0, MAX_WEIGHT)
        if weights.concept_name not in referenced:
            raise InvalidRequestError(
                f"prompt must reference every concept given, <{weights.concept_name}> is missing: {prompt!r}",
                field="prompt",
            )
        if weights.base_model_id != components.base_model_id:
            raise InvalidRequestError(
                f"concepts[{i}] ({weights.concept_name}) was trained on {weights.base_model_id}, "
                f"this worker runs {components.base_model_id}",
                field=f"concepts[{i}]",
            )
        if weights.token_embeddings.shape[2] != hidden:
            raise ModelLoadError(
                f"adapter {weights.concept_name} has {weights.token_embeddings.shape[2]}-wide embeddings, "
                f"the text encoder needs {hidden}"
            )
