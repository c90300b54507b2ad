"""What every fusion method is asked for and answers: concept placements, the checked request, and the result.

Shared by ``conductor`` and ``regional`` (the service's fusion modes) and ``stacked`` (the naive baseline they are
measured against), so all accept and refuse exactly the same requests. The limits are the API's (``core.rules``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import PIL.Image

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.prompts import Prompt
from core.ml.regions import Region
from core.progress import StepCallback, no_progress
from core.rules import (
    MAX_CONCEPTS,
    MAX_GUIDANCE,
    MAX_OUTPUTS,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_WEIGHT,
    MIN_SIDE,
    SIDE_MULTIPLE,
)

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


def _check_side(name: str, side: int, step: int) -> None:
    if side % step or not MIN_SIDE <= side <= MAX_SIDE:
        raise InvalidRequestError(
            f"{name} must be a multiple of {step} within {MIN_SIDE}..{MAX_SIDE}, got {side}", field=name
        )


@dataclass(frozen=True)
class SamplingRequest:
    r"""One generation as every fusion method takes it: the prompts parsed once, the concepts and the sampling values.

    Made with :meth:`create` (from text) or directly from parsed ``Prompt``\ s; either way it is checked once, when
    made, against the limits of ``core.rules`` and its own concepts. What depends on the loaded model (the latent
    grid, the base model, the embedding width) is checked by :meth:`check_fits`, which every fusion method calls.

    Args:
        prompt: the prompt; it references every placement's concept as ``<name>`` and no other concept.
        negative_prompt: classifier-free guidance's negative text (concept references become stand-ins).
        placements: up to ``MAX_CONCEPTS`` concepts with their regions and weights (``weight · alpha`` scales both
            LoRAs), each concept once.
        width, height: output size in pixels, multiples of the VAE's scale within ``MIN_SIDE..MAX_SIDE``.
        num_inference_steps: DPM-Solver++ steps (1..``MAX_STEPS``).
        guidance_scale: CFG scale (0..``MAX_GUIDANCE``); at 1 or below, no unconditional pass is made.
        seed: seed of the first image; image ``i`` uses ``seed + i``.
        num_outputs: images to make (1..``MAX_OUTPUTS``).
        on_step: gets ``Progress("sampling", i, total)`` after each step; raising stops within that step.

    Raises:
        InvalidRequestError: a value breaks a rule (``field`` names it; ``UnknownConceptError`` for a reference to a
            concept without a placement).
    """

    prompt: Prompt
    negative_prompt: Prompt
    placements: tuple[ConceptPlacement, ...]
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_outputs: int = 1
    on_step: StepCallback = no_progress

    @classmethod
    def create(
        cls,
        *,
        prompt: str,
        negative_prompt: str = "",
        placements: Sequence[ConceptPlacement],
        width: int,
        height: int,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        num_outputs: int = 1,
        on_step: StepCallback = no_progress,
    ) -> SamplingRequest:
        """A request from text: both prompts parsed with the placements' class words (see the class)."""
        words = {p.weights.concept_name: p.weights.class_word for p in placements}
        return cls(
            Prompt.parse(prompt, words),
            Prompt.parse(negative_prompt, words),
            tuple(placements),
            width,
            height,
            num_inference_steps,
            guidance_scale,
            seed,
            num_outputs,
            on_step,
        )

    def __post_init__(self) -> None:
        _check_side("width", self.width, SIDE_MULTIPLE)
        _check_side("height", self.height, SIDE_MULTIPLE)
        _check_range("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        _check_range("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE)
        _check_range("num_outputs", self.num_outputs, 1, MAX_OUTPUTS)
        _check_range("seed", self.seed, 0, MAX_SEED - self.num_outputs + 1)
        if len(self.placements) > MAX_CONCEPTS:
            raise InvalidRequestError(
                f"concepts must hold at most {MAX_CONCEPTS}, got {len(self.placements)}", field="concepts"
            )
        names = [p.weights.concept_name for p in self.placements]
        if len(set(names)) != len(names):
            raise InvalidRequestError(f"concepts must name each concept once, got {names}", field="concepts")
        referenced = set(self.prompt.names)
        for i, placement in enumerate(self.placements):
            _check_range(f"concepts[{i}].weight", placement.weight, 0.0, MAX_WEIGHT)
            if placement.weights.concept_name not in referenced:
                raise InvalidRequestError(
                    f"prompt must reference every concept given, <{placement.weights.concept_name}> is missing: "
                    f"{self.prompt.text!r}",
                    field="prompt",
                )
        self.prompt.check(names, field="prompt")
        self.negative_prompt.check(names, field="negative_prompt")

    @property
    def seeds(self) -> list[int]:
        """The seed of each image: ``seed, seed + 1, …``."""
        return [self.seed + i for i in range(self.num_outputs)]

    @property
    def summary(self) -> str:
        """``"2 image(s) 64x64 with 1 concept(s)"``, for logs."""
        return f"{self.num_outputs} image(s) {self.width}x{self.height} with {len(self.placements)} concept(s)"

    @property
    def use_cfg(self) -> bool:
        """Whether sampling makes an unconditional pass (classifier-free guidance above 1)."""
        return self.guidance_scale > 1.0

    def check_fits(self, components: SDComponents) -> None:
        """Refuse a request the loaded model cannot run.

        Raises:
            InvalidRequestError: a side is not a multiple of the VAE's scale, or an adapter was trained on another
                base model (``field`` names it).
            ModelLoadError: an adapter's embeddings do not fit the text encoder.
        """
        _check_side("width", self.width, components.vae_scale_factor)
        _check_side("height", self.height, components.vae_scale_factor)
        hidden = int(components.text_encoder.config.hidden_size)
        for i, placement in enumerate(self.placements):
            weights = placement.weights
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
