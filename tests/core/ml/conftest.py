"""Fixtures for the ML tests: the tiny preset built once per session, two concepts trained for 2 steps each."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import PIL.Image
import pytest
import torch

from core.ml.components import SDComponents, load_components
from core.ml.edlora.adapter import EDLoRAWeights
from core.ml.edlora.trainer import train_edlora
from core.ml.fusion.request import ConceptPlacement, SamplingRequest
from core.training_options import EDLoRAConfig


@pytest.fixture(scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; on a busy shared CPU, OpenMP workers spinning against each other
    make a 20 ms UNet call take over a second. ``components`` (so every model fixture) depends on this, so all
    results compared in a run come from the same thread count (float reductions, hence exact pixels, depend on
    it). Not autouse: tests elsewhere keep their thread count until the first model fixture is made."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def components(models_root: Path, _one_torch_thread: None) -> SDComponents:
    return load_components("tiny", models_root)


def sampling_request(
    prompt: str, placements: list[ConceptPlacement], negative_prompt: str = "", **overrides: Any
) -> SamplingRequest:
    """A 64x64, 2-step request (for the prompt encoders, which read only its prompts and placements)."""
    values: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 7.5, "seed": 0}
    return SamplingRequest.create(
        prompt=prompt, negative_prompt=negative_prompt, placements=placements, **{**values, **overrides}
    )


def square_image(color: tuple[int, int, int], seed: int) -> PIL.Image.Image:
    """64x64: a noisy grey background with a coloured square in the middle."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(100, 156, size=(64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = color
    return PIL.Image.fromarray(pixels)


def square_mask() -> PIL.Image.Image:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    return PIL.Image.fromarray(mask)


@pytest.fixture(scope="session")
def images() -> list[PIL.Image.Image]:
    return [square_image((200, 40, 40), 0), square_image((180, 60, 30), 1)]


@pytest.fixture(scope="session")
def fast_config() -> EDLoRAConfig:
    # Learning rates well above the defaults so two steps leave a visible mark on the adapter.
    return EDLoRAConfig(max_train_steps=2, batch_size=2, lr_text_encoder=1e-3, lr_unet=1e-2, lr_embedding=1e-2)


@pytest.fixture(scope="session")
def corgi(components: SDComponents, images: list[PIL.Image.Image], fast_config: EDLoRAConfig) -> EDLoRAWeights:
    return train_edlora(components, images, concept_name="corgi", class_word="dog", config=fast_config)


@pytest.fixture(scope="session")
def tabby(components: SDComponents, fast_config: EDLoRAConfig) -> EDLoRAWeights:
    tabby_images = [square_image((40, 40, 200), 2), square_image((30, 80, 190), 3)]
    config = fast_config.model_copy(update={"seed": 1})
    return train_edlora(
        components, tabby_images, concept_name="tabby", class_word="cat", config=config, masks=[square_mask()] * 2
    )


@dataclass
class Snapshot:
    """Everything a pipeline could leave behind on shared components."""

    state: dict[str, torch.Tensor]
    requires_grad: dict[str, bool]
    processors: dict[str, Any]
    module_types: dict[str, str]
    attributes: set[str]
    unet_output: torch.Tensor
    text_output: torch.Tensor


def take_snapshot(components: SDComponents) -> Snapshot:
    modules = {"te": components.text_encoder, "unet": components.unet, "vae": components.vae}
    state = {f"{p}.{k}": v.detach().clone() for p, m in modules.items() for k, v in m.state_dict().items()}
    grads = {f"{p}.{k}": v.requires_grad for p, m in modules.items() for k, v in m.named_parameters()}
    types = {f"{p}.{k}": type(v).__name__ for p, m in modules.items() for k, v in m.named_modules()}
    attributes = {f"{p}.{a}" for p, m in modules.items() for a in vars(m)}
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, components.tokenizer.model_max_length, 32, generator=generator)
    ids = torch.tensor([components.tokenizer("a photo of a dog", padding="max_length").input_ids])
    with torch.no_grad():
        unet_output = components.unet(sample, 10, encoder_hidden_states=context).sample
        text_output = components.text_encoder(ids).last_hidden_state
    return Snapshot(state, grads, dict(components.unet.attn_processors), types, attributes, unet_output, text_output)


def assert_same(before: Snapshot, after: Snapshot) -> None:
    assert after.state.keys() == before.state.keys()
    assert all(torch.equal(before.state[k], after.state[k]) for k in before.state)
    assert after.requires_grad == before.requires_grad
    assert after.module_types == before.module_types
    assert after.attributes == before.attributes
    assert all(after.processors[k] is v for k, v in before.processors.items())
    assert torch.equal(after.unet_output, before.unet_output)
    assert torch.equal(after.text_output, before.text_output)


@pytest.fixture
def unchanged(components: SDComponents) -> Callable[[], None]:
    """Call the returned function at the end of a test: it asserts the shared components are as they were."""
    before = take_snapshot(components)
    return lambda: assert_same(before, take_snapshot(components))
