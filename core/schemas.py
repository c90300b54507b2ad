"""Request models of the public API (docs/api.md): what a client sends to create a training or a generation.

The API validates requests with them and submission (``core.submissions``) turns an accepted one into the job's
plan. What the API answers (files, concepts, jobs) is in ``core.resources``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.config import GenerationDefaults, TrainingDefaults
from core.rules import (
    CLASS_WORD_RE,
    CONCEPT_NAME_RE,
    MAX_CONCEPTS,
    MAX_GUIDANCE,
    MAX_OUTPUTS,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_TRAINING_EXAMPLES,
    MAX_TRAINING_IMAGES,
    MAX_WEIGHT,
    MIN_SIDE,
    SIDE_MULTIPLE,
    concept_refs,
    is_concept_name,
    is_concept_ref,
)
from core.training_options import EDLoRAConfig

Metadata = dict[str, Any]

# C0/C1 control characters other than tab and line breaks: never meaningful in a prompt, and a NUL or an escape
# sequence that reaches a log line or a terminal is how injection starts.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _printable(value: str) -> str:
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"must not contain control characters (found U+{ord(found.group()):04X})")
    return value


Text = Annotated[str, AfterValidator(_printable)]
"""Free text from a client (prompts, captions): any Unicode except control characters other than tab and newlines."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ----------------------------------------------------------------------------------------------

WebhookEvent = Literal["start", "progress", "completed"]


class ConceptSpec(_Strict):
    name: str = Field(description="How prompts refer to the concept: <name>.")
    class_word: str = Field(description="One plain word the base model knows (dog, woman, teapot).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not is_concept_name(v):
            raise ValueError(f"must match {CONCEPT_NAME_RE.pattern}, got {v!r}")
        return v

    @field_validator("class_word")
    @classmethod
    def _class_word(cls, v: str) -> str:
        if not CLASS_WORD_RE.fullmatch(v):
            raise ValueError(f"must be one lowercase word of 2..30 letters, got {v!r}")
        return v


class MaskPrompt(_Strict):
    """Where the concept is in one training image, for Segment Anything: a point or a box, normalised to 0..1."""

    point: tuple[float, float] | None = Field(None, description="[x, y] on the concept, 0..1 of width/height.")
    box: tuple[float, float, float, float] | None = Field(
        None, description="[x0, y0, x1, y1] around the concept, 0..1, with x0 < x1 and y0 < y1."
    )

    @field_validator("point", "box")
    @classmethod
    def _inside_image(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        # Validated per field so a 422 names mask_prompts[i].point or .box, not just the prompt.
        if v is not None and any(not 0.0 <= c <= 1.0 for c in v):
            raise ValueError(f"coordinates are normalised to 0..1 (inside the image), got {list(v)}")
        return v

    @field_validator("box")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError(f"box must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one(self) -> MaskPrompt:
        if (self.point is None) == (self.box is None):
            raise ValueError("give exactly one of point or box")
        return self


MAX_NEIGHBOURS = MAX_CONCEPTS
"""Other concepts a training may paste beside its concept (as many as a generation may combine)."""


class CompositesSpec(_Strict):
    """Seg-Mix (MuDI): also train on composites that paste the concept beside other objects, with exact masks.

    The worker cuts the concept out of its training images (by their masks) and pastes it into one half of an image
    whose other half holds a neighbour cut out of another concept's training images (by that training's masks),
    on the concept photo's own background with the concept filled in; the caption names both in image order
    ("a <concept> on the left and a cat on the right"; a neighbour is named by its class word). The other object's
    mask is what the separation loss's other-object term (``options.separation_other_weight``) needs.
    """

    neighbours: list[str] = Field(
        min_length=1,
        max_length=MAX_NEIGHBOURS,
        description=(
            f"1..{MAX_NEIGHBOURS} names or ids of this tenant's other concepts whose training images (and the masks "
            "that training used) supply the neighbours; their training images must still be stored."
        ),
    )
    share: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Fraction of the training examples that are composites; the rest are the images themselves.",
    )
    count: int | None = Field(
        None,
        ge=1,
        le=MAX_TRAINING_EXAMPLES,
        description=(
            f"Training examples in all, images plus composites, 1..{MAX_TRAINING_EXAMPLES}; null = twice the "
            "number of images (at share 0.5: every image once alone and once in a composite)."
        ),
    )
    background: Literal["concept", "flat"] = Field(
        "concept",
        description=(
            "Composite background: the concept's photo with the concept filled in from its surroundings, or a flat "
            "plate of that photo's median background colour."
        ),
    )

    @field_validator("neighbours")
    @classmethod
    def _distinct_refs(cls, v: list[str]) -> list[str]:
        for ref in v:
            if not is_concept_ref(ref):
                raise ValueError(f"each neighbour is a concept name or id, got {ref!r}")
        repeated = sorted({ref for ref in v if v.count(ref) > 1})
        if repeated:
            raise ValueError(f"must not repeat a concept, got {repeated} more than once")
        return v

    def example_count(self, num_images: int) -> int:
        """Training examples in all for ``num_images`` training images (``count`` or its default)."""
        return self.count if self.count is not None else min(MAX_TRAINING_EXAMPLES, 2 * num_images)


class TrainingRequest(_Strict):
    concept: ConceptSpec
    images: list[str] = Field(
        min_length=1, max_length=MAX_TRAINING_IMAGES, description=f"1..{MAX_TRAINING_IMAGES} file ids of this tenant."
    )
    masks: list[str] | None = Field(None, description="Optional mask file per image (white = the concept).")
    mask_prompts: list[MaskPrompt | None] | None = Field(
        None,
        description="Optional, one per image: where the concept is, for Segment Anything (null = the default choice).",
    )
    captions: list[Text | None] | None = Field(
        None, description="Optional, one per image; <name> inside stands for the concept (null = a default caption)."
    )
    options: EDLoRAConfig = Field(default_factory=EDLoRAConfig)
    composites: CompositesSpec | None = Field(
        None, description="Optional: also train on composites of the concept beside other concepts' objects."
    )
    webhook: str | None = Field(None, description="https URL to POST this job's events to (see Webhooks).")
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None, description="Which events to send: start, progress, completed (default: completed)."
    )
    metadata: Metadata | None = Field(None, description="Any JSON object; echoed on the job and the concept.")

    def with_defaults(self, defaults: TrainingDefaults) -> TrainingRequest:
        """A copy whose options take the preset's ``defaults`` for every option the request did not set."""
        update = {
            name: value
            for name, value in defaults.model_dump(exclude_none=True).items()
            if name not in self.options.model_fields_set
        }
        return self.model_copy(update={"options": self.options.model_copy(update=update)}) if update else self

    @model_validator(mode="after")
    def _per_image_lists(self) -> TrainingRequest:
        for name in ("masks", "mask_prompts", "captions"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.images):
                raise ValueError(f"{name} must have one entry per image ({len(self.images)}), got {len(value)}")
        return self


Box = tuple[float, float, float, float]


class Region(_Strict):
    box: Box | None = Field(None, description="[x0, y0, x1, y1], 0..1 of the image, x0 < x1 and y0 < y1.")
    mask: str | None = Field(None, description="A file id of a mask image (white = the region).")

    @model_validator(mode="after")
    def _one(self) -> Region:
        if (self.box is None) == (self.mask is None):
            raise ValueError("give exactly one of box or mask")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {list(self.box)}")
        return self


class ConceptUse(_Strict):
    concept: str = Field(description="Concept name or id.")
    region: Region | None = Field(
        None, description="Where the concept goes: a box or a mask file; absent = automatic layout."
    )
    weight: float | None = Field(
        None, ge=0.0, le=MAX_WEIGHT, description="Adapter scale (LoRA strength). Default: the preset's (sd15 0.7)."
    )


class LayoutSpec(_Strict):
    image: str = Field(description="File id of the reference image.")
    masks: list[str] | None = Field(None, description="File ids of one mask per concept.")


class StyleSpec(_Strict):
    image: str = Field(description="File id of the style image.")
    scale: float = Field(1.0, ge=0.0, le=MAX_WEIGHT)
    mode: Literal["style", "style_and_layout"] = Field(
        "style", description="style: style-carrying attention blocks only; style_and_layout: the layout blocks too."
    )


class ControlSpec(_Strict):
    type: Literal["canny", "softedge", "depth"] = Field(
        "canny", description="What the ControlNet is conditioned on, computed from the stage-1 image."
    )
    scale: float = Field(0.6, ge=0.0, le=MAX_WEIGHT)


def _multiple_of_8(v: int) -> int:
    if v % SIDE_MULTIPLE:
        raise ValueError(f"must be a multiple of {SIDE_MULTIPLE}, got {v}")
    return v


class GenerationRequest(_Strict):
    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: Text = Field("", max_length=MAX_PROMPT_CHARS)
    concepts: list[ConceptUse] | None = Field(None, max_length=MAX_CONCEPTS)
    layout: LayoutSpec | None = Field(
        None, description="Optional reference image (and masks) whose layout the result follows."
    )
    fusion: Literal["regional", "conductor"] = Field(
        "conductor", description="conductor (Concept Conductor multipath sampling) or regional (the cheap baseline)."
    )
    style: StyleSpec | None = Field(None, description="Optional: a styling stage with IP-Adapter on this image.")
    control: ControlSpec | None = Field(None, description="ControlNet of the styling stage (needs style).")
    # Left out, these take the preset's defaults (``core.config.PRESET_GENERATION_DEFAULTS``: its native size and
    # the sampling it was measured with); the accepted job records the values it ran with.
    width: Annotated[
        int | None, Field(ge=MIN_SIDE, le=MAX_SIDE, description="Default: the preset's native width.")
    ] = None
    height: Annotated[
        int | None, Field(ge=MIN_SIDE, le=MAX_SIDE, description="Default: the preset's native height.")
    ] = None
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Default: the preset's (sd15 50).")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=MAX_GUIDANCE, description="Default: the preset's (sd15 7.5)."
    )
    seed: int | None = Field(None, ge=0, le=MAX_REQUEST_SEED)
    num_outputs: int = Field(1, ge=1, le=MAX_OUTPUTS)
    webhook: str | None = Field(None, description="https URL to POST this job's events to (see Webhooks).")
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None, description="Which events to send: start, progress, completed (default: completed)."
    )
    metadata: Metadata | None = Field(None, description="Any JSON object; echoed on the job.")

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int | None) -> int | None:
        return None if v is None else _multiple_of_8(v)

    def with_defaults(self, defaults: GenerationDefaults) -> GenerationRequest:
        """A copy with every sampling field it leaves out (concept weights included) taken from ``defaults``."""
        given = {name: getattr(self, name) for name in ("width", "height", "num_inference_steps", "guidance_scale")}
        update: dict[str, Any] = {k: getattr(defaults, k) if v is None else v for k, v in given.items()}
        if self.concepts is not None:
            update["concepts"] = [
                use if use.weight is not None else use.model_copy(update={"weight": defaults.lora_weight})
                for use in self.concepts
            ]
        return self.model_copy(update=update)

    def sampling(self) -> tuple[int, int, int, float]:
        """``(width, height, num_inference_steps, guidance_scale)`` of a request that went through
        :meth:`with_defaults` (every accepted job did)."""
        width, height, steps, guidance = self.width, self.height, self.num_inference_steps, self.guidance_scale
        if width is None or height is None or steps is None or guidance is None:
            raise ValueError("sampling() needs a request with its defaults applied (with_defaults)")
        return width, height, steps, guidance

    def concept_refs(self) -> list[str]:
        """Names or ids of concepts the prompt refers to, in prompt order, without repeats."""
        return concept_refs(self.prompt)
