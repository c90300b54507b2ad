"""Default training captions by concept type (Mix-of-Show's ``EnhanceText``: object, human, style).

Used when a training request gives no captions; ``<concept>`` stands for the concept's learned words. Objects use
Textual Inversion's object templates (``core.ml.prompts.CAPTION_TEMPLATES``); people get person phrasings; styles
put the concept after "in the style of".
"""

from __future__ import annotations

from core.ml.prompts import CAPTION_TEMPLATES
from core.training_options import ConceptType

HUMAN_TEMPLATES = (
    "a photo of a <concept>",
    "a portrait of a <concept>",
    "a cropped photo of the <concept>",
    "a close-up photo of a <concept>",
    "a bright photo of the <concept>",
    "a good photo of a <concept>",
    "a photo of the <concept> smiling",
    "a photo of one <concept>",
    "a rendition of the <concept>",
    "a dark photo of the <concept>",
)

STYLE_TEMPLATES = (
    "a painting in the style of <concept>",
    "a rendering in the style of <concept>",
    "a cropped painting in the style of <concept>",
    "the painting in the style of <concept>",
    "a clean painting in the style of <concept>",
    "a close-up painting in the style of <concept>",
    "a bright painting in the style of <concept>",
    "a good painting in the style of <concept>",
    "a picture in the style of <concept>",
    "a small painting in the style of <concept>",
)


def caption_templates(concept_type: ConceptType) -> tuple[str, ...]:
    """The default caption templates of a concept type (each contains ``<concept>`` once)."""
    return {"object": CAPTION_TEMPLATES, "human": HUMAN_TEMPLATES, "style": STYLE_TEMPLATES}[concept_type]
