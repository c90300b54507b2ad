"""What personalization is measured by in the shapes world: counts with their Wilson intervals (``Tally``,
``MeanShare``), sampling learned concepts alone and in pairs with each fusion method, and the fidelity,
position-following, binding, leakage and attention-in-mask figures of the scorer's verdicts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.diagnostics import measure_attention_in_mask
from core.ml.fusion.conductor import generate_conductor
from core.ml.fusion.regional import ConceptPlacement, GenerationResult, SamplingRequest, generate_regional
from core.ml.fusion.stacked import generate_stacked
from core.rules import MAX_OUTPUTS
from tessera_shapes import drawing, sampling, world
from tessera_shapes.evaluation import _wilson
from tessera_shapes.personalization import (
    FUSION_METHODS,
    HALVES,
    SHAPES_RECIPE,
    SIDES,
    FusionMethod,
    PersonalizationRecipe,
    coverage_mask,
)
from tessera_shapes.scorer import detect_objects, score_image


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
