"""The rules the API and the ML code share: request limits, the concept-name rule and the concept-reference rule.

This module imports nothing but the standard library (no torch, no ``core.ml``, no pydantic), so the API validates
requests with the same numbers the fusion code checks them against (docs/api.md states them to clients).

Concept references: a prompt refers to a concept as ``<ref>``, where ``ref`` is the concept's name or its id
(``cpt_…``). The reference rule is the API's (``[A-Za-z0-9_-]{1,64}`` between angle brackets); it is wider than
the name rule on purpose: every name and every id matches it, and a reference that matches it but names no ready
concept is answered ``422 unknown_concept`` instead of passing through as plain text. By the time a prompt reaches
the ML code every reference in it has been rewritten to a concept name (``core.submissions``), so the ML code
reads it with this same rule.
"""

from __future__ import annotations

import re

# ---- generation requests -----------------------------------------------------------------------------------

MAX_PROMPT_CHARS = 1000
"""Characters in a prompt or a negative prompt."""
MIN_SIDE = 64
"""Smallest width or height of a generated image, in pixels."""
MAX_SIDE = 1024
"""Largest width or height of a generated image, in pixels (also the largest training resolution)."""
SIDE_MULTIPLE = 8
"""Widths and heights are multiples of this (the VAE's downscaling factor of every preset)."""
MAX_STEPS = 150
"""Sampling steps of one generation."""
MAX_GUIDANCE = 30.0
"""Classifier-free guidance scale."""
MAX_OUTPUTS = 8
"""Images one generation makes."""
MAX_CONCEPTS = 4
"""Concepts one generation combines (and neighbours one training may paste beside its concept)."""
MAX_WEIGHT = 2.0
"""A concept's adapter scale, and the scale of the styling stage's IP-Adapter and ControlNet."""
MAX_REQUEST_SEED = 2**32 - 1
"""The largest seed a client may give a generation (the images use ``seed, seed + 1, …``)."""
MAX_SEED = 2**63 - 1
"""The largest seed the samplers and the trainer take (a generation's last image included)."""

# ---- training requests -------------------------------------------------------------------------------------

MAX_TRAINING_IMAGES = 50
"""Images one training request may give."""
MAX_TRAINING_EXAMPLES = 200
"""Training examples (the images plus composites) one training may encode."""
MAX_TRAINING_STEPS = 5000
"""Optimizer steps of one training."""

# ---- concepts ----------------------------------------------------------------------------------------------

CONCEPT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
"""A concept's name: 1..40 lowercase letters, digits, ``_`` and ``-``, starting with a letter or a digit."""

CONCEPT_REF_PATTERN = r"[A-Za-z0-9_-]{1,64}"
"""What may stand between the angle brackets of a reference: a concept name or id (see the module docstring)."""
CONCEPT_REF_RE = re.compile(rf"<({CONCEPT_REF_PATTERN})>")
"""``<ref>`` in a prompt; group 1 is the name or id."""

CLASS_WORD_RE = re.compile(r"[a-z]{2,30}")
"""A concept's class word: one lowercase word of 2..30 letters (fullmatch)."""


def is_concept_name(value: str) -> bool:
    """Whether ``value`` follows the concept-name rule (``CONCEPT_NAME_RE``), the whole of it."""
    # fullmatch: the pattern's ``$`` also matches before a final newline, which no name may end with.
    return CONCEPT_NAME_RE.fullmatch(value) is not None


def is_concept_ref(value: str) -> bool:
    """Whether ``value`` may refer to a concept (a name or an id), without the angle brackets."""
    return re.fullmatch(CONCEPT_REF_PATTERN, value) is not None


def concept_refs(prompt: str) -> list[str]:
    """Names or ids referenced as ``<ref>`` in ``prompt``, each once, in order of first appearance."""
    return list(dict.fromkeys(CONCEPT_REF_RE.findall(prompt)))
