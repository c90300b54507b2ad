"""The attention separation loss on the tiny preset: captured map shapes, the terms' behaviour, where gradients go."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable

import numpy as np
import PIL.Image
import pytest
import torch

from core.ml.components import SDComponents
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.attention import layerwise_cross_attention
from core.ml.edlora.capture import ConceptAttentionStore, capture_concept_attention, concept_columns
from core.ml.edlora.diagnostics import measure_attention_in_mask
from core.ml.edlora.embeddings import encode_layerwise, init_concept_embeddings
from core.ml.edlora.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS, add_lora
from core.ml.edlora.separation import (
    SeparationMasks,
    leakage_term,
    mass_inside,
    separation_loss,
    timestep_weight,
)
from core.ml.edlora.trainer import train_edlora
from core.ml.edlora.training_data import prepare_data
from core.ml.prompts import bind_caption
from core.training_options import EDLoRAConfig


def _left_half(side: int) -> torch.Tensor:
    mask = torch.zeros(1, side, side)
    mask[:, :, : side // 2] = 1.0
    return mask


@pytest.mark.parametrize(("factors", "sides"), [(None, [8, 4]), ((1,), [8]), ((2,), [4])])
def test_captured_maps_have_the_documented_shapes(
    components: SDComponents, factors: tuple[int, ...] | None, sides: list[int]
) -> None:
    unet = components.unet
    prompts = [bind_caption("a photo of a <concept>", "corgi"), bind_caption("<concept> on the beach", "corgi")]
    store = ConceptAttentionStore()
    before = dict(unet.attn_processors)
    with torch.no_grad(), layerwise_cross_attention(unet) as num_layers:
        embeddings = {"corgi": torch.randn(2, num_layers, 32)}
        states = encode_layerwise(components.tokenizer, components.text_encoder, prompts, embeddings, num_layers)
        with capture_concept_attention(unet, store, factors) as names:
            store.columns, present = concept_columns(components.tokenizer, prompts, "corgi")
            unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), encoder_hidden_states=states)
    maps = store.by_resolution()
    assert list(maps) == sides and all(maps[s].shape == (2, s, s, 2) for s in sides)
    assert names and all(n.endswith("attn2.processor") for n in names)
    # Columns are the two concept words: after BOS + "a photo of a" (4 tokens), and at the start.
    assert store.columns.tolist() == [[5, 6], [1, 2]] and present.tolist() == [1.0, 1.0]
    # Each captured value is a probability (one head-averaged column of a softmax over the prompt).
    assert all(bool(((m >= 0) & (m <= 1)).all()) for m in maps.values())
    assert all(unet.attn_processors[k] is v for k, v in before.items())


def test_leakage_is_zero_inside_the_mask_and_rises_as_attention_moves_out() -> None:
    side = 8
    mask = _left_half(side)
    leaks = []
    for column in range(side):
        maps = torch.zeros(1, side, side, 2)
        maps[0, 2:6, column, :] = 0.25  # a vertical bar of attention, moved left to right
        leaks.append(float(leakage_term(maps, mask).mean()))
    assert leaks[: side // 2] == [0.0] * (side // 2)
    assert leaks[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in itertools.pairwise(leaks))
    # Half the mass outside gives half.
    maps = torch.zeros(1, side, side, 2)
    maps[0, 0, side // 2 - 1 : side // 2 + 1] = 1.0
    assert float(leakage_term(maps, mask).mean()) == pytest.approx(0.5)


def test_separation_term_counts_mass_on_other_objects_and_the_gate_drops_late_timesteps() -> None:
    side = 8
    concept = _left_half(side)[None]  # [1, 1, 8, 8]
    others = torch.zeros(1, 1, side, side)
    others[..., :, side - 2 :] = 1.0
    maps = torch.zeros(1, side, side, 2)
    maps[0, :, side - 1, :] = 1.0  # everything on the other object
    config = EDLoRAConfig(separation_leak_weight=0.0, separation_other_weight=1.0)
    loss, in_mask, on_others = separation_loss(
        {side: maps}, SeparationMasks(concept, concept, others), weights=torch.ones(1), config=config
    )
    assert float(loss) == pytest.approx(1.0) and float(in_mask[side].mean()) == 0.0
    assert float(on_others[side].mean()) == pytest.approx(1.0)
    # Without other objects the term, and the share it reports, are exactly 0.
    alone = separation_loss(
        {side: maps}, SeparationMasks(concept, concept, torch.zeros_like(others)), weights=torch.ones(1), config=config
    )
    assert float(alone.loss) == 0.0 and float(alone.on_others[side].sum()) == 0.0
    gated = EDLoRAConfig(separation_max_timestep=800, separation_timestep_weighting="linear")
    assert timestep_weight(torch.tensor([0, 500, 800, 999]), gated, 1000).tolist() == [1.0, 0.5, 0.0, 0.0]
    assert float(mass_inside(maps, concept[:, 0]).mean()) == 0.0


def test_gradients_reach_only_adapter_parameters_and_the_concept_rows(components: SDComponents) -> None:
    text_encoder = copy.deepcopy(components.text_encoder).requires_grad_(False)
    unet = copy.deepcopy(components.unet).requires_grad_(False)
    prompts = [bind_caption("a photo of a <concept>", "corgi")]
    store = ConceptAttentionStore()
    with layerwise_cross_attention(unet) as num_layers, capture_concept_attention(unet, store):
        init = init_concept_embeddings(
            components.tokenizer, text_encoder, "dog", num_layers, torch.Generator().manual_seed(0)
        )
        embeddings = torch.nn.Parameter(init)
        add_lora(text_encoder, "t", rank=2, targets=TEXT_ENCODER_TARGETS, multiplier=1.0)
        add_lora(unet, "t", rank=2, targets=UNET_TARGETS, multiplier=1.0)
        for name, param in [*text_encoder.named_parameters(), *unet.named_parameters()]:
            if "lora_B" in name:  # B starts at 0, which would block gradients into A
                torch.nn.init.normal_(param, std=0.1)
        states = encode_layerwise(components.tokenizer, text_encoder, prompts, {"corgi": embeddings}, num_layers)
        store.columns, _ = concept_columns(components.tokenizer, prompts, "corgi")
        unet(torch.randn(1, 4, 8, 8), torch.tensor([100]), encoder_hidden_states=states)
        mask = _left_half(8)[None]
        loss, _, _ = separation_loss(
            store.by_resolution(),
            SeparationMasks(mask, mask, torch.zeros_like(mask)),
            weights=torch.ones(1),
            config=EDLoRAConfig(separation_fill_weight=1.0),
        )
        loss.backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    with_grad = [n for m in (text_encoder, unet) for n, p in m.named_parameters() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert any("lora_" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in unet.named_parameters())
    # The shared embedding table (every vocabulary row) never gets a gradient: concept rows live in `embeddings`.
    assert text_encoder.get_input_embeddings().weight.grad is None


def test_training_with_the_separation_loss_records_it_and_leaves_components_alone(
    components: SDComponents, images: list[PIL.Image.Image], unchanged: Callable[[], None]
) -> None:
    square = np.zeros((64, 64), np.uint8)
    square[16:48, 16:48] = 255
    corner = np.zeros((64, 64), np.uint8)
    corner[:10, 50:] = 255
    config = EDLoRAConfig(
        max_train_steps=2, batch_size=2, separation_loss_weight=0.5, augmentation_views=1, mask_background_weight=0.1
    )
    weights = train_edlora(
        components,
        images,
        concept_name="corgi",
        class_word="dog",
        config=config,
        masks=[PIL.Image.fromarray(square)] * 2,
        other_masks=[PIL.Image.fromarray(corner), None],
    )
    options = weights.training_options
    assert options["separation_loss"] is True
    assert options["separation_other_term"] == "active" and options["examples_with_other_objects"] == 1
    assert set(options["attention_in_mask_during_training"]) == {"8", "4"}
    assert all(0.0 <= v <= 1.0 for v in options["attention_in_mask_during_training"].values())
    unchanged()


def test_attention_in_mask_diagnostic(
    components: SDComponents, images: list[PIL.Image.Image], corgi: EDLoRAWeights, unchanged: Callable[[], None]
) -> None:
    whole = PIL.Image.new("L", (64, 64), 255)
    report = measure_attention_in_mask(components, corgi, images, [whole, whole], timesteps=(300,))
    assert report.overall == pytest.approx(1.0, abs=1e-5) and set(report.per_resolution) == {8, 4}
    half = PIL.Image.fromarray(np.repeat(np.array([[255] * 32 + [0] * 32], np.uint8), 64, axis=0))
    partial = measure_attention_in_mask(components, corgi, images, [half, half], timesteps=(300,))
    assert 0.0 < partial.overall < 1.0 and len(partial.per_word) == 2
    assert partial.as_dict()["attention_in_mask"] == round(partial.overall, 4)
    unchanged()


def test_the_separation_masks_are_the_enclosed_region_while_the_diffusion_loss_keeps_the_hole(
    components: SDComponents, images: list[PIL.Image.Image]
) -> None:
    # A ring's hole is drawn by the ring's words: the leakage term must not count their attention there as leakage,
    # while the diffusion loss still weighs the hole as background.
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 31.5, xx - 31.5)
    ring = PIL.Image.fromarray((((radius > 14) & (radius < 30)) * 255).astype(np.uint8))
    config = EDLoRAConfig(max_train_steps=1, separation_loss_weight=1.0)
    data = prepare_data(
        components, images[:1], [ring], None, None, "corgi", 64, config, torch.Generator().manual_seed(0)
    )
    assert data.masks is not None and data.regions is not None and data.dilated is not None
    side = data.masks.shape[-1]
    centre = (slice(None), slice(None), slice(side // 2 - 1, side // 2 + 1), slice(side // 2 - 1, side // 2 + 1))
    assert float(data.masks[centre].max()) == 0.0
    assert float(data.regions[centre].min()) == 1.0 and float(data.dilated[centre].min()) == 1.0
    assert torch.equal(data.regions[:, :, 0], data.masks[:, :, 0])  # outside the ring nothing changes
