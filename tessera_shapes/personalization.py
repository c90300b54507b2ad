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
and sample with its guidance, steps and LoRA weight. This module holds the recipe, the concepts' drawn training
examples and their learning; :mod:`tessera_shapes.concept_measures` samples and judges them, keeping counts as
``Tally`` (successes out of n) so reports can state the sample size and a Wilson interval of every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import PIL.Image

from core.config import PRESET_GENERATION_DEFAULTS
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.composites import Cutout, TrainingExample, compose_examples
from core.ml.edlora.trainer import train_edlora
from core.ml.prompts import CAPTION_PLACEHOLDER
from core.training_options import EDLoRAConfig
from tessera_shapes import drawing, sampling, world

FusionMethod = Literal["stacked", "regional", "conductor"]
FUSION_METHODS: tuple[FusionMethod, ...] = ("stacked", "regional", "conductor")
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
            that draws the concept in the centre only (at the sides it loses its shape); every side should get at
            least two (one right-side example made right-side results swing with the seed).
        composites: training examples added beside the ``num_images`` drawn ones, each the concept cut out of an
            example and pasted beside a drawn base-world object (``core.ml.edlora.composites``, MuDI's Seg-Mix),
            captioned in image order, so the concept is seen in either slot of a two-object caption and the
            separation loss's other-object term has other objects to act on. 0: the concept alone only.
        lora_weight: LoRA strength at sampling, relative to training (``ConceptPlacement.weight``): the shapes
            preset's default, which the API applies to a request that gives none. At 1.0 guidance 4 overshoots a
            learned colour: purple_triangle came out magenta (fidelity 0/8 on one training seed, 8/8 at 0.7); at
            0.85 its fidelity was 15/48 against 48/48 at 0.7 (stage-2f weights, 3 training seeds).
        guidance_scale: classifier-free guidance; this world's base model wants 3-5 (7.5 over-saturates).
        num_inference_steps: DPM-Solver++ steps.
        negative_prompt: CFG's negative text.
    """

    training: EDLoRAConfig
    num_images: int = 6
    example_positions: tuple[str, ...] = ("left", "right", "center")
    composites: int = 6
    lora_weight: float = PRESET_GENERATION_DEFAULTS["shapes"].lora_weight
    guidance_scale: float = 4.0
    num_inference_steps: int = 20
    negative_prompt: str = ""


SHAPES_RECIPE = PersonalizationRecipe(
    training=EDLoRAConfig(
        max_train_steps=300,
        rank=8,
        batch_size=5,
        lr_embedding=1e-3,
        lr_text_encoder=1e-4,
        lr_unet=3e-3,
        noise_offset=0.0,
        separation_loss_weight=0.0,
        # The service always trains with masks (the flat-colour segmenter's here). With no weight on background
        # pixels the LoRA (UNet lr 3e-3) repaints the background and the star melts into a blob: 0/8 samples of
        # "a <purple_star>" showed it, against 8/8 at 0.3 and at 1.0 (same seed, 300 steps).
        mask_background_weight=0.3,
    ),
)
"""The recipe the shapes evaluation (and the demo) use; see the module docstring for what it is measured on."""


# The nearest shape the base model knows, per held-out shape. The class word stands for the concept wherever its
# learned words are absent (the other concept's path in regional fusion, the base path) and initialises V_class; a
# word the base model never saw in a caption ("star") has a random embedding and derails the whole prompt.
KNOWN_CLASS_WORDS: dict[str, str] = {"star": "triangle", "ring": "circle", **{s: s for s in world.BASE_SHAPES}}


def class_word(concept: world.Concept) -> str:
    """The concept's class word: the base-world shape nearest to the concept's shape (``KNOWN_CLASS_WORDS``)."""
    return KNOWN_CLASS_WORDS[concept.spec.shape]


def _example_scenes(concept: world.Concept, count: int, seed: int, positions: Sequence[str]) -> list[drawing.Scene]:
    return [
        sampling.place_objects((concept.spec.at(positions[i % len(positions)]),), sampling.scene_rng(seed, i))
        for i in range(count)
    ]


def concept_examples(
    concept: world.Concept, *, count: int, seed: int, positions: Sequence[str] = ("center",)
) -> tuple[list[PIL.Image.Image], list[str]]:
    """``count`` drawn images of the concept alone and their training captions, reproducible from ``seed``.

    Image ``i`` puts the concept at ``positions[i % len(positions)]``, captioned as the world does
    (``"a <name>"`` centred, ``"a <name> on the left"`` at a side).
    """
    images, captions = [], []
    for scene in _example_scenes(concept, count, seed, positions):
        (spec,) = scene.specs
        images.append(drawing.render_scene(scene))
        side = "" if spec.position == "center" else f" on the {spec.position}"
        captions.append(f"a <{concept.name}>{side}")
    return images, captions


def coverage_mask(obj: drawing.PlacedObject) -> PIL.Image.Image:
    """The exact mask of a drawn object: white where it covers at least half a pixel (L mode, 64x64)."""
    covered = drawing.shape_coverage(obj.spec.shape, obj.box) >= 0.5
    return PIL.Image.fromarray((covered * 255).astype(np.uint8), "L")


def concept_masks(
    concept: world.Concept, *, count: int, seed: int, positions: Sequence[str] = ("center",)
) -> list[PIL.Image.Image]:
    """The exact masks of ``concept_examples`` with the same arguments (what a perfect segmenter would give)."""
    return [coverage_mask(scene.objects[0]) for scene in _example_scenes(concept, count, seed, positions)]


# Where composites put objects: world pairs are 17-24 px in a 32 px half, mid-height (place_objects' side layout).
COMPOSITE_SCALE = (0.55, 0.75)
COMPOSITE_BAND = (0.2, 0.8)


def neighbour_cutouts(count: int, seed: int) -> list[Cutout]:
    """``count`` base-world objects drawn alone in the centre, each with its exact mask and its caption phrase."""
    cutouts = []
    for i in range(count):
        rng = sampling.scene_rng(seed, i)
        spec = world.BASE_OBJECTS[int(rng.integers(len(world.BASE_OBJECTS)))]
        scene = sampling.place_objects((spec,), rng)
        cutouts.append(Cutout(drawing.render_scene(scene), coverage_mask(scene.objects[0]), spec.noun_phrase))
    return cutouts


def training_examples(
    concept: world.Concept, *, recipe: PersonalizationRecipe = SHAPES_RECIPE, seed: int
) -> list[TrainingExample]:
    """The drawn examples of ``concept`` with exact masks, then ``recipe.composites`` Seg-Mix composites of them
    beside base-world objects (exact masks for both, captions in image order, the concept on either side)."""
    positions = recipe.example_positions
    images, captions = concept_examples(concept, count=recipe.num_images, seed=seed, positions=positions)
    masks = concept_masks(concept, count=recipe.num_images, seed=seed, positions=positions)
    own = [TrainingExample(i, m, None, c) for i, m, c in zip(images, masks, captions, strict=True)]
    if recipe.composites == 0:
        return own
    total = recipe.num_images + recipe.composites
    return compose_examples(
        own,
        neighbour_cutouts(max(8, recipe.composites), seed + 7_777),
        count=total,
        seed=seed,
        resolution=world.RESOLUTION,
        share=recipe.composites / total,
        background="flat",
        scale=COMPOSITE_SCALE,
        vertical=COMPOSITE_BAND,
        concept_phrase=f"a {CAPTION_PLACEHOLDER}",
    )


def learn_concept(
    components: SDComponents,
    concept: world.Concept,
    *,
    recipe: PersonalizationRecipe = SHAPES_RECIPE,
    seed: int,
    separation_loss_weight: float | None = None,
) -> EDLoRAWeights:
    """Train an ED-LoRA for ``concept`` on :func:`training_examples` drawn with ``seed``.

    The same seed draws the images and seeds training, so the adapter is reproducible from ``(concept, seed)``.
    Training always gets the examples' exact masks (the service has its segmenter's), so the diffusion loss is
    masked and, in composites, the other object's mask feeds the separation loss's other-object term.

    Args:
        separation_loss_weight: the attention separation loss weight; None keeps the recipe's. 0 and a positive
            weight are the two arms that isolate the loss's effect.
    """
    examples = training_examples(concept, recipe=recipe, seed=seed)
    config = recipe.training.model_copy(update={"seed": seed})
    if separation_loss_weight is not None:
        config = config.model_copy(update={"separation_loss_weight": separation_loss_weight})
    return train_edlora(
        components,
        [e.image for e in examples],
        concept_name=concept.name,
        class_word=class_word(concept),
        config=config,
        masks=[e.mask for e in examples],
        other_masks=[e.others for e in examples],
        captions=[e.caption for e in examples],
    )
