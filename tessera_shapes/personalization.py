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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import PIL.Image

from core.config import PRESET_GENERATION_DEFAULTS
from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.composites import Cutout, TrainingExample, compose_examples
from core.ml.edlora.diagnostics import measure_attention_in_mask
from core.ml.edlora.trainer import train_edlora
from core.ml.fusion.conductor import generate_conductor
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, SamplingRequest, generate_regional
from core.ml.fusion.stacked import generate_stacked
from core.ml.prompts import CAPTION_PLACEHOLDER
from core.rules import MAX_OUTPUTS
from core.training_options import EDLoRAConfig
from tessera_shapes import drawing, sampling, world
from tessera_shapes.evaluation import _wilson
from tessera_shapes.scorer import detect_objects, score_image

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
    """Two-concept scenes of one fusion method: binding per image (both right, each on its side), per concept
    (this concept right on its side; two per image), and leakage."""

    binding: Tally = field(default_factory=Tally)
    concept_binding: Tally = field(default_factory=Tally)
    leakage: Tally = field(default_factory=Tally)
    per_pair: dict[str, Tally] = field(default_factory=dict)
    kept: dict[str, Sampled] = field(default_factory=dict)

    def merged(self, other: PairScores) -> PairScores:
        """Both sets of tallies added (e.g. two training seeds); kept samples of ``self`` win."""
        pairs = {
            k: self.per_pair.get(k, Tally()).merged(other.per_pair.get(k, Tally()))
            for k in {*self.per_pair, *other.per_pair}
        }
        return PairScores(
            self.binding.merged(other.binding),
            self.concept_binding.merged(other.concept_binding),
            self.leakage.merged(other.leakage),
            dict(sorted(pairs.items())),
            {**other.kept, **self.kept},
        )


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


@dataclass
class Sampled:
    """Images of one prompt and, per image, the masks its fusion method composed each concept in (L mode, image
    size; conductor's are its final refined masks, regional's its regions, stacked has none)."""

    images: list[np.ndarray] = field(default_factory=list)
    masks: list[list[PIL.Image.Image]] = field(default_factory=list)


def sample_with_masks(
    components: SDComponents,
    adapters: Sequence[EDLoRAWeights],
    prompt: str,
    *,
    count: int,
    seed: int,
    method: FusionMethod = "stacked",
    recipe: PersonalizationRecipe = SHAPES_RECIPE,
) -> Sampled:
    """``count`` images of ``prompt`` with ``adapters``, seeds ``seed, seed + 1, ...``, with their masks.

    ``"stacked"`` runs every adapter in one path (with one adapter: plain ED-LoRA sampling); ``"regional"`` gives
    the i-th adapter the i-th half of the image (left, right) and ``"conductor"`` starts its masks there (default
    ``ConductorConfig``, no layout reference), so both take at most two adapters.
    """
    side = components.default_resolution
    out = Sampled()
    generators: dict[FusionMethod, Callable[[SDComponents, SamplingRequest], GenerationResult]] = {
        "stacked": generate_stacked,
        "regional": generate_regional,
        "conductor": generate_conductor,
    }
    generate = generators[method]
    # Stacking ignores regions; regional composes in the halves; Conductor starts its masks from them.
    regions = [None] * len(adapters) if method == "stacked" else list(HALVES[: len(adapters)])
    for start in range(0, count, MAX_OUTPUTS):
        placements = [ConceptPlacement(w, r, recipe.lora_weight) for w, r in zip(adapters, regions, strict=True)]
        batch = min(MAX_OUTPUTS, count - start)
        request = SamplingRequest.create(
            prompt=prompt,
            negative_prompt=recipe.negative_prompt,
            placements=placements,
            width=side,
            height=side,
            num_inference_steps=recipe.num_inference_steps,
            guidance_scale=recipe.guidance_scale,
            seed=seed + start,
            num_outputs=batch,
        )
        result = generate(components, request)
        out.images.extend(np.asarray(image.convert("RGB")) for image in result.images)
        k = len(adapters)
        for i in range(batch):
            if len(result.masks) == batch * k:  # one set per image (conductor)
                out.masks.append(result.masks[i * k : (i + 1) * k])
            else:  # one set for the call (regional's regions) or none (stacked)
                out.masks.append(list(result.masks[:k]))
    return out


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
    """The images of :func:`sample_with_masks`: uint8 arrays of shape ``(64, 64, 3)`` (the native size)."""
    return sample_with_masks(components, adapters, prompt, count=count, seed=seed, method=method, recipe=recipe).images


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
    keep: int = 0,
) -> dict[FusionMethod, PairScores]:
    """Binding and leakage of each fusion method over ``samples_per_pair`` images of every (left, right) pair.

    Every method samples the same seeds, so the methods are compared on the same starting noise. Each pair's own
    tallies are in ``PairScores.per_pair`` under ``"<left>+<right>"``; the first ``keep`` images of each pair and
    their masks in ``PairScores.kept``.
    """
    results: dict[FusionMethod, PairScores] = {m: PairScores() for m in methods}
    for index, (left, right) in enumerate(pairs):
        expected = [left.spec.at("left"), right.spec.at("right")]
        pair_adapters = [adapters[left.name], adapters[right.name]]
        key = f"{left.name}+{right.name}"
        for method in methods:
            sampled = sample_with_masks(
                components,
                pair_adapters,
                pair_prompt(left, right),
                count=samples_per_pair,
                seed=seed + index * 1_000,
                method=method,
                recipe=recipe,
            )
            scores = results[method]
            own = scores.per_pair.setdefault(key, Tally())
            for image in sampled.images:
                score = score_image(image, expected)
                bound = all(v.correct for v in score.objects)
                scores.binding.add(bound)
                own.add(bound)
                for verdict in score.objects:
                    scores.concept_binding.add(verdict.correct)
                scores.leakage.add(score.leakage)
            if keep:
                scores.kept[key] = Sampled(sampled.images[:keep], sampled.masks[:keep])
    return results


@dataclass
class MeanShare:
    """Per-image shares in [0, 1] (e.g. attention-in-mask), their mean and a normal-approximation 95% interval."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        if len(self.values) < 2:
            return None
        half = 1.96 * float(np.std(self.values, ddof=1)) / len(self.values) ** 0.5
        mean = float(np.mean(self.values))
        return (max(0.0, mean - half), min(1.0, mean + half))


def attention_in_mask(
    components: SDComponents, weights: EDLoRAWeights, concept: world.Concept, *, images: int, seed: int
) -> MeanShare:
    """Attention-in-mask of ``weights`` on ``images`` held-out scenes: the concept at a side beside a base object.

    Uses ``core.ml.edlora.diagnostics.measure_attention_in_mask`` (fixed timesteps, caption ``"a <name>"``) one image
    at a time, so the report can give a spread; masks are the concept's exact coverage.
    """
    shares = MeanShare()
    for i in range(images):
        rng = sampling.scene_rng(seed, i)
        side = SIDES[i % 2]
        other = world.BASE_OBJECTS[int(rng.integers(len(world.BASE_OBJECTS)))].at(SIDES[1 - i % 2])
        scene = sampling.place_objects((concept.spec.at(side), other), rng)
        result = measure_attention_in_mask(
            components,
            weights,
            [drawing.render_scene(scene)],
            [coverage_mask(scene.objects[0])],
            seed=seed + i,
            caption=f"a <{concept.name}>",
        )
        shares.values.append(result.overall)
    return shares
