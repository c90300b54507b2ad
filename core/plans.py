"""What a worker runs: the typed plan of a job, made once at submission (``core.submissions``) and stored with it.

A plan holds everything the worker needs, resolved and checked: object keys instead of file ids, concept names
instead of references, the preset's defaults applied and the seed drawn. The worker reads the plan alone (never the
request echoed in ``JobRecord.input``), so what ran is what the record says. Plans are discriminated by ``kind``,
the job's kind.

Records stored before plans were typed hold a dict without ``kind`` beside the accepted request in ``input``;
``upgrade_plan`` rebuilds the typed plan from the two (the accepted request carried every default).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.schemas import CompositesSpec, ConceptSpec, ControlSpec, MaskPrompt
from core.training_options import EDLoRAConfig

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)``, normalised to 0..1 (checked by the API's ``Region``)."""


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- training -----------------------------------------------------------------------------------------------


class NeighbourPlan(_Part):
    """Where a neighbour concept's cut-outs come from: its training images and the masks that training used.

    Per image the mask is the uploaded one, else the one its training computed, else None: the worker segments that
    image again, prompted by ``mask_prompts`` as that training was.
    """

    concept_id: str
    name: str
    class_word: str
    image_keys: list[str]
    mask_keys: list[str | None]
    mask_prompts: list[MaskPrompt | None]


class TrainingPlan(_Part):
    """A training job: the concept it makes, its images (and masks) as object keys, and the options it trains with
    (the preset's training defaults applied)."""

    kind: Literal["training"] = "training"
    concept_id: str
    concept: ConceptSpec
    image_keys: list[str]
    mask_keys: list[str] | None = None
    mask_prompts: list[MaskPrompt | None] | None = None
    captions: list[str | None] | None = None
    options: EDLoRAConfig
    composites: CompositesSpec | None = None
    neighbours: list[NeighbourPlan] | None = None


# ---- generation ---------------------------------------------------------------------------------------------


class BoxRegion(_Part):
    """A concept placed in a normalised box."""

    box: Box


class MaskRegion(_Part):
    """A concept placed in a mask image (white = the region), stored at ``mask_key``."""

    mask_key: str


class ConceptPlan(_Part):
    """One concept of a generation: its adapter, where it goes (None: the automatic layout) and its LoRA weight."""

    concept_id: str
    name: str
    class_word: str
    adapter_key: str
    adapter_sha256: str | None
    region: BoxRegion | MaskRegion | None = None
    weight: float


class LayoutPlan(_Part):
    """A layout reference image and, optionally, one mask per concept (in prompt order)."""

    image_key: str
    mask_keys: list[str] | None = None


class StylePlan(_Part):
    """The styling stage: the style image, the IP-Adapter's scale and blocks, and the ControlNet."""

    image_key: str
    scale: float
    mode: Literal["style", "style_and_layout"]
    control: ControlSpec


class SamplingPlan(_Part):
    """The sampling values of a generation: the request's, the preset's defaults where it gave none, the seed drawn
    at submission where it gave none (the fields of ``core.ml.fusion.request.SamplingRequest`` of the same names)."""

    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    num_outputs: int


class GenerationPlan(_Part):
    """A generation job: its prompts (concept references written as names), its concepts in prompt order (each
    once), its sampling values and its optional stages."""

    kind: Literal["generation"] = "generation"
    fusion: Literal["regional", "conductor"]
    prompt: str
    negative_prompt: str
    concepts: list[ConceptPlan]
    sampling: SamplingPlan
    layout: LayoutPlan | None = None
    style: StylePlan | None = None


JobPlan = Annotated[TrainingPlan | GenerationPlan, Field(discriminator="kind")]
"""The plan of a job of either kind."""


def upgrade_plan(kind: str, plan: dict[str, Any], accepted: dict[str, Any]) -> dict[str, Any] | None:
    """The typed form of a plan stored as a string-keyed dict (before plans were typed); None for an empty one.

    Args:
        kind: the job's kind.
        plan: the stored dict (object keys and concepts resolved at submission).
        accepted: the job's ``input``, the request as accepted (defaults applied, seed drawn).
    """
    if not plan:
        return None
    if kind == "training":
        return {
            "kind": "training",
            **plan,
            "concept": accepted["concept"],
            "mask_prompts": accepted.get("mask_prompts"),
            "captions": accepted.get("captions"),
            "options": accepted.get("options") or {},
            "composites": accepted.get("composites"),
        }
    return {
        "kind": "generation",
        **plan,
        "fusion": accepted.get("fusion", "conductor"),
        "negative_prompt": accepted.get("negative_prompt", ""),
        "sampling": {name: accepted.get(name) for name in SamplingPlan.model_fields},
    }
