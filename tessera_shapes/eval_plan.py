"""What the shapes evaluation measures and reports: the report's sections, fusion rows and definitions, the
:class:`EvalPlan` (how many samples each part draws; ``FULL_PLAN`` for ``make eval``, ``QUICK_PLAN`` for
``make test``) and the headline figures with their goals (``TARGETS``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from core.config import PRESET_TRAINING_DEFAULTS
from core.training_options import EDLoRAConfig
from tessera_shapes import world
from tessera_shapes.personalization import SHAPES_RECIPE, PersonalizationRecipe

REPORT_VERSION = 2
SECTIONS = ("scorer", "decoder_ceiling", "base_model", "concept_learning", "fusion", "separation")
SEPARATION_LOSS_WEIGHT = (
    PRESET_TRAINING_DEFAULTS["shapes"].separation_loss_weight or EDLoRAConfig().separation_loss_weight
)
"""The with-loss arm's weight: what the service trains the shapes preset with when it has masks (its training
default, 0.1; ``EDLoRAConfig``'s 1.0 turns the ring into a disc, ``core.config.PRESET_TRAINING_DEFAULTS``)."""
NOT_IN_PLAN = "not in this plan (it trains every concept twice more); make eval measures it"
FUSED_METHODS = (
    "stacked",
    "regional",
    "conductor",
    "regional+composites",
    "conductor+composites",
    "conductor+separation",
    "regional+separation",
)
"""Fusion rows of the report, one per (training arm, method): the three methods on concepts trained as a training
request does by default (the concept's own examples, no separation loss); regional and conductor on concepts trained
with Seg-Mix composites beside other objects (``recipe.composites``), and on concepts trained on those composites
with the separation loss (the preset's weight). Same seeds in every arm."""
Arm = Literal["plain", "composites", "separation"]
"""How an arm trains: the default request / plus composites / plus composites and the separation loss."""

Figure = dict[str, Any]

DEFINITIONS = {
    "scorer": (
        "ground_truth = drawn scenes (every colour x scored shape x pattern x position, plus random pairs; crisp and "
        "softened like a decoder) judged fully correct; near_misses = drawn wrong shapes (pinched squares, rounded "
        "diamonds, blobs, stars for triangles, rings without a hole, ...) refused as the shape they pretend to be"
    ),
    "decoder_ceiling": (
        "drawn scenes of each evaluation concept (per position) and pair through the VAE (posterior mean), judged "
        "by the scorer: the most any generation could score"
    ),
    "base_model": (
        "stock pipeline with the preset's default sampling; trait rates are per expected object, all_correct per "
        "image (every object right and nothing extra); class_word_side = 'a triangle on the right' (no colour); "
        "pair = both caption orders pooled; leakage = an object wears the other object's colour or shape"
    ),
    "concept_learning.fidelity": "'a <c>': some object has the concept's colour, shape and pattern",
    "concept_learning.position_following": "'a <c> on the left/right': the concept right in every trait, on that side",
    "fusion.binding": (
        "'a <c1> on the left and a <c2> on the right', every ordered pair (both orders), every training seed: both "
        "right in every trait, each on its side, pooled and per pair"
    ),
    "fusion.concept_binding": "same scenes, per concept: this concept right in every trait on its side",
    "fusion.leakage": "same scenes: an object wears the other concept's colour or shape",
    "fusion.arms": (
        "stacked, regional, conductor: concepts trained as a training request is by default (their own examples, "
        "no separation loss); +composites: trained again with Seg-Mix composites beside base-world objects (exact "
        "masks for both); +separation: on those composites with the separation loss at the preset's weight (0.1)"
    ),
    "separation": (
        "the +composites arm (weight 0) against the +separation arm (same composites and seeds); "
        "attention_in_mask = share of the concept words' cross-attention inside the concept's mask on held-out "
        "scenes with a neighbour (mean over images); "
        "leakage as fusion.leakage, per method and arm"
    ),
}


@dataclass(frozen=True)
class EvalPlan:
    """How many samples each part of the evaluation draws.

    Args:
        single_repeats, pair_repeats: repeats of the base prompt sets (``evaluation.evaluate_base_model``).
        concepts: evaluation concepts learned with ED-LoRA (names from ``world.HELD_OUT_CONCEPTS``); every ordered
            pair of two of them is a fusion pair, so both orders are measured.
        training_seeds: every concept is trained once per seed (and, with ``separation``, twice more per seed: on
            composites, and on composites with the separation loss).
        concept_samples: per concept and seed, images of ``"a <c>"`` for fidelity, and again of
            ``"a <c> on the left/right"`` (split evenly) for position following.
        pair_samples: images per ordered pair, seed and fusion method.
        separation: also train the +composites and +separation arms and report their fusion rows and the
            separation section.
        attention_images: held-out scenes per concept, seed and arm for attention-in-mask.
        ceiling_images: drawn scenes per decoder-ceiling cell.
        scorer_samples: near misses per kind (and random ground-truth pairs) in the scorer's check.
        figure_samples: images per pair and method kept for ``eval/shapes.png`` (first training seed).
        recipe: how concepts are learned and sampled.
    """

    single_repeats: int
    pair_repeats: int
    concepts: tuple[str, ...]
    training_seeds: tuple[int, ...]
    concept_samples: int
    pair_samples: int
    separation: bool = False
    attention_images: int = 8
    ceiling_images: int = 24
    scorer_samples: int = 24
    figure_samples: int = 4
    recipe: PersonalizationRecipe = field(default=SHAPES_RECIPE)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every ordered pair of two evaluation concepts: each pair in both orders."""
        return tuple((a, b) for a in self.concepts for b in self.concepts if a != b)


FULL_PLAN = EvalPlan(
    single_repeats=2,
    pair_repeats=1,
    concepts=world.EVALUATION_CONCEPTS,
    training_seeds=(0, 1, 2),
    concept_samples=16,
    pair_samples=8,
    separation=True,
)
"""``make eval``: 3 training seeds x 2 orders x 8 = 48 pair images per method (more with a third concept)."""
QUICK_PLAN = EvalPlan(
    single_repeats=1,
    pair_repeats=1,
    concepts=world.EVALUATION_CONCEPTS[:2],
    training_seeds=(0,),
    concept_samples=8,
    pair_samples=8,
    ceiling_images=8,
    scorer_samples=4,
    figure_samples=2,
)
"""``make test``: one training seed, one pair in both orders."""


def plan_json(plan: EvalPlan) -> dict[str, Any]:
    """The plan, recipe included, as JSON-ready values."""
    recipe = {**asdict(plan.recipe), "training": plan.recipe.training.model_dump(mode="json")}
    plain = {
        **{f.name: getattr(plan, f.name) for f in fields(plan) if f.name != "recipe"},
        "pairs": plan.pairs,
        "recipe": recipe,
    }
    # Tuples become lists, as they read back from the file.
    loaded: dict[str, Any] = json.loads(json.dumps(plain))
    return loaded


TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("conductor_pair_binding", "fusion", "binding.conductor", 0.7),
    ("regional_pair_binding", "fusion", "binding.regional", 0.6),
    ("conductor_separation_leakage", "separation", "leakage.conductor.with_loss", 0.05),
    ("base_pair_all_correct", "base_model", "pair.all_correct", 0.95),
    ("base_pair_leakage", "base_model", "pair.leakage", 0.01),
    ("scorer_ground_truth_accepted", "scorer", "ground_truth_accepted", 0.99),
    ("scorer_near_misses_refused", "scorer", "near_misses_refused.pooled", 0.95),
)
"""The headline figures the composition issue sets goals for: (name, section, figure, goal). Leakage goals are
upper bounds, the rest lower bounds. Per-pair rows (``binding.conductor.<pair>``) and the composite arms
(``binding.conductor+composites``) are not these figures."""


def target_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Each headline figure of ``TARGETS`` with its goal and whether it is met (None when not measured)."""
    out: dict[str, Any] = {}
    for name, section, key, goal in TARGETS:
        fig = report[section][key]
        upper = "leakage" in key
        value = fig["value"]
        met = None if value is None else (value <= goal if upper else value >= goal)
        out[name] = {**fig, "figure": f"{section}.{key}", "goal": f"{'<=' if upper else '>='} {goal}", "met": met}
    return out
