"""Personalization measured in the shapes world: ED-LoRA on held-out concepts, alone and two at a time.

Each held-out concept (a purple star, an orange ring, a striped yellow square: traits the base model never saw) is
learned by ED-LoRA from a few drawn images, then sampled and judged by the pixel scorer:

- *fidelity*: in "a <concept>", does some object carry the concept's colour, shape and pattern?
- *position following*: in "a <concept> on the left/right", is the concept drawn, right in every trait, on that side?
- *binding* and *leakage* of two concepts, "a <c1> on the left and a <c2> on the right", sampled with naive
  stacking (``core.ml.fusion.stacked``) and with regional fusion (``core.ml.fusion.regional``, left and right
  halves): binding = both concepts right in every trait on their own side; leakage = an object wears the other
  concept's colour or shape.

``SHAPES_RECIPE`` is the recipe tuned for this world; the service's demo can train with ``SHAPES_RECIPE.training``
and sample with its guidance, steps and LoRA weight. Counts are kept as ``Tally`` (successes out of n) so reports
can state the sample size and a Wilson interval of every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import PIL.Image

from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.config import EDLoRAConfig
from core.ml.edlora.trainer import train_edlora
from core.ml.fusion.regional import ConceptPlacement, generate_regional
from core.ml.fusion.request import MAX_OUTPUTS
from core.ml.fusion.stacked import generate_stacked
from core.ml.shapes import world
from core.ml.shapes.evaluation import _wilson
from core.ml.shapes.scorer import detect_objects, score_image

FusionMethod = Literal["stacked", "regional"]
FUSION_METHODS: tuple[FusionMethod, ...] = ("stacked", "regional")
SIDES: tuple[str, str] = ("left", "right")
# Regional fusion's boxes for "... on the left and ... on the right": the two halves of the image.
HALVES = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))


@dataclass(frozen=True)
class PersonalizationRecipe:
    """How a shapes-world concept is learned and sampled.

    Args:
        training: ED-LoRA hyperparameters (the trainer's own options).
        num_images: drawn example images per concept, each showing the concept alone.
        example_positions: where the examples put the concept, cycled over the images; a side is captioned
            ``"a <concept> on the left"``, the centre ``"a <concept>"``. Examples only in the centre teach a LoRA
            that draws the concept in the centre only (at the sides it loses its shape).
        lora_weight: LoRA strength at sampling, relative to training (``ConceptPlacement.weight``).
        guidance_scale: classifier-free guidance; this world's base model wants 3-5 (7.5 over-saturates).
        num_inference_steps: DPM-Solver++ steps.
        negative_prompt: CFG's negative text.
    """

    training: EDLoRAConfig
    num_images: int = 5
    example_positions: tuple[str, ...] = ("center", "left", "right")
    lora_weight: float = 1.0
    guidance_scale: float = 4.0
    num_inference_steps: int = 20
    negative_prompt: str = ""


SHAPES_RECIPE = PersonalizationRecipe(
    training=EDLoRAConfig(
        max_train_steps=150,
        rank=8,
        batch_size=5,
        lr_embedding=1e-3,
        lr_text_encoder=1e-4,
        lr_unet=3e-3,
        noise_offset=0.0,
    ),
)
"""The recipe the shapes evaluation (and the demo) use; see the module docstring for what it is measured on."""


@dataclass
class Tally:
    """``successes`` out of ``n`` samples, with the rate and its 95% Wilson interval."""

    successes: int = 0
    n: int = 0

    def add(self, success: bool) -> None:
        self.successes += int(success)
        self.n += 1

    def merged(self, other: Tally) -> Tally:
        return Tally(self.successes + other.successes, self.n + other.n)

    @property
    def rate(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return _wilson(self.successes, self.n) if self.n else None


@dataclass
class ConceptScores:
    """One learned concept: fidelity of ``"a <c>"`` and position following of ``"a <c> on the left/right"``."""

    fidelity: Tally = field(default_factory=Tally)
    position: Tally = field(default_factory=Tally)


@dataclass
class PairScores:
    """Two-concept scenes of one fusion method: binding (both right, each on its side) and leakage."""

    binding: Tally = field(default_factory=Tally)
    leakage: Tally = field(default_factory=Tally)


def class_word(concept: world.Concept) -> str:
    """The concept's class word: its shape's name, the word a user would type for it."""
    return concept.spec.shape


def concept_examples(
    concept: world.Concept, *, count: int, seed: int, positions: Sequence[str] = ("center",)
) -> tuple[list[PIL.Image.Image], list[str]]:
    """``count`` drawn images of the concept alone and their training captions, reproducible from ``seed``.

    Image ``i`` puts the concept at ``positions[i % len(positions)]``, captioned as the world does
    (``"a <name>"`` centred, ``"a <name> on the left"`` at a side).
    """
    images, captions = [], []
    for i in range(count):
        spec = concept.spec.at(positions[i % len(positions)])
        images.append(world.render_scene(world.place_objects((spec,), world.scene_rng(seed, i))))
        side = "" if spec.position == "center" else f" on the {spec.position}"
        captions.append(f"a <{concept.name}>{side}")
    return images, captions


def learn_concept(
    components: SDComponents, concept: world.Concept, *, recipe: PersonalizationRecipe = SHAPES_RECIPE, seed: int
) -> EDLoRAWeights:
    """Train an ED-LoRA for ``concept`` from ``recipe.num_images`` images drawn with ``seed``.

    The same seed draws the images and seeds training, so the adapter is reproducible from ``(concept, seed)``.
    """
    images, captions = concept_examples(
        concept, count=recipe.num_images, seed=seed, positions=recipe.example_positions
    )
    config = recipe.training.model_copy(update={"seed": seed})
    return train_edlora(
        components, images, concept_name=concept.name, class_word=class_word(concept), config=config, captions=captions
    )


def sample(
    components: SDComponents,
    adapters: Sequence[EDLoRAWeights],
    prompt: str,
    *,
    count: int,
    seed: int,
    method: FusionMethod = "stacked",
    recipe: PersonalizationRecipe = SHAPES_RECIPE,
) -> list[np.ndarray]:
    """``count`` images of ``prompt`` with ``adapters``, seeds ``seed, seed + 1, ...``.

    ``"stacked"`` runs every adapter in one path (with one adapter: plain ED-LoRA sampling); ``"regional"`` gives
    the i-th adapter the i-th half of the image (left, right), so it takes exactly two adapters.

    Returns:
        uint8 arrays of shape ``(64, 64, 3)`` (the components' native size).
    """
    side = components.default_resolution
    images: list[np.ndarray] = []
    for start in range(0, count, MAX_OUTPUTS):
        if method == "regional":
            placements = [
                ConceptPlacement(w, box, recipe.lora_weight) for w, box in zip(adapters, HALVES, strict=True)
            ]
            generate = generate_regional
        else:
            placements = [ConceptPlacement(w, None, recipe.lora_weight) for w in adapters]
            generate = generate_stacked
        result = generate(
            components,
            prompt=prompt,
            negative_prompt=recipe.negative_prompt,
            placements=placements,
            width=side,
            height=side,
            num_inference_steps=recipe.num_inference_steps,
            guidance_scale=recipe.guidance_scale,
            seed=seed + start,
            num_outputs=min(MAX_OUTPUTS, count - start),
        )
        images.extend(np.asarray(image.convert("RGB")) for image in result.images)
    return images


def shows_concept(image: np.ndarray, concept: world.Concept) -> bool:
    """Some object in ``image`` has the concept's colour, shape and pattern (anywhere, extras allowed)."""
    spec = concept.spec
    return any(
        o.colour == spec.colour and o.shape == spec.shape and o.pattern == spec.pattern for o in detect_objects(image)
    )


def measure_concept(
    components: SDComponents,
    weights: EDLoRAWeights,
    concept: world.Concept,
    *,
    samples: int,
    seed: int,
    recipe: PersonalizationRecipe = SHAPES_RECIPE,
) -> ConceptScores:
    """Fidelity over ``samples`` images of ``"a <c>"``; position following over ``samples`` images split evenly
    between ``"a <c> on the left"`` and ``"... on the right"`` (the right side gets the odd one)."""
    scores = ConceptScores()
    for image in sample(components, [weights], f"a <{concept.name}>", count=samples, seed=seed, recipe=recipe):
        scores.fidelity.add(shows_concept(image, concept))
    counts = {"left": samples // 2, "right": samples - samples // 2}
    for offset, side in enumerate(SIDES):
        prompt = f"a <{concept.name}> on the {side}"
        images = sample(
            components, [weights], prompt, count=counts[side], seed=seed + (offset + 1) * 10_000, recipe=recipe
        )
        for image in images:
            (verdict,) = score_image(image, [concept.spec.at(side)]).objects
            scores.position.add(verdict.correct)
    return scores


def pair_prompt(left: world.Concept, right: world.Concept) -> str:
    """``"a <left> on the left and a <right> on the right"``."""
    return f"a <{left.name}> on the left and a <{right.name}> on the right"


def measure_pairs(
    components: SDComponents,
    adapters: Mapping[str, EDLoRAWeights],
    pairs: Sequence[tuple[world.Concept, world.Concept]],
    *,
    samples_per_pair: int,
    seed: int,
    methods: Sequence[FusionMethod] = FUSION_METHODS,
    recipe: PersonalizationRecipe = SHAPES_RECIPE,
) -> dict[FusionMethod, PairScores]:
    """Binding and leakage of each fusion method over ``samples_per_pair`` images of every (left, right) pair.

    Every method samples the same seeds, so the methods are compared on the same starting noise.
    """
    results: dict[FusionMethod, PairScores] = {m: PairScores() for m in methods}
    for index, (left, right) in enumerate(pairs):
        expected = [left.spec.at("left"), right.spec.at("right")]
        pair_adapters = [adapters[left.name], adapters[right.name]]
        for method in methods:
            images = sample(
                components,
                pair_adapters,
                pair_prompt(left, right),
                count=samples_per_pair,
                seed=seed + index * 1_000,
                method=method,
                recipe=recipe,
            )
            for image in images:
                score = score_image(image, expected)
                results[method].binding.add(all(v.correct for v in score.objects))
                results[method].leakage.add(score.leakage)
    return results
