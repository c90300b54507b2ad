"""Evaluation metrics of the Custom Diffusion / Mix-of-Show protocol: CLIP-T, CLIP-I and DINO.

- ``encoders``: the encoders root layout, ``load_eval_encoders`` (CLIP ViT-B/32, DINO ViT-S/16, local files only).
- ``similarity``: the scores on embeddings (mean pairwise cosine, CLIPScore).
- ``clip_score``: CLIP-T (with concept references replaced by class words) and CLIP-I.
- ``dino``: DINO similarity.
- ``evaluation``: all three for one concept (``evaluate_concept_images``) and the folder-based ``run_concept_eval``.
- ``tiny``: tiny random encoders in the same layout, for tests.

Imports torch and transformers, never the web or queue frameworks.
"""

from core.ml.metrics.clip_score import CLIPSCORE_PREFIX, class_word_prompt, clip_i, clip_t
from core.ml.metrics.dino import dino_score
from core.ml.metrics.encoders import EvalEncoders, load_eval_encoders
from core.ml.metrics.evaluation import evaluate_concept_images, run_concept_eval
from core.ml.metrics.similarity import CLIPSCORE_WEIGHT

__all__ = [
    "CLIPSCORE_PREFIX",
    "CLIPSCORE_WEIGHT",
    "EvalEncoders",
    "class_word_prompt",
    "clip_i",
    "clip_t",
    "dino_score",
    "evaluate_concept_images",
    "load_eval_encoders",
    "run_concept_eval",
]
