"""Per-row adapters of the batched multipath forward: the run slices compute what peft's mixed batch computes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.ml.edlora.lora import add_lora
from core.ml.fusion.multipath import BASE_ADAPTER, _project, adapter_runs


@pytest.mark.parametrize(
    ("names", "runs"),
    [
        (["__base__"] * 2 + ["a"] * 2 + ["b"] * 2, [(2, 4, "a"), (4, 6, "b")]),
        (["a", "a", "b", "__base__"], [(0, 2, "a"), (2, 3, "b")]),
        (["__base__"] * 3, []),
        (["a", "b", "a"], [(0, 1, "a"), (1, 2, "b"), (2, 3, "a")]),
        ([], []),
    ],
)
def test_adapter_runs_are_the_consecutive_rows_of_each_adapter(
    names: list[str], runs: list[tuple[int, int, str]]
) -> None:
    assert adapter_runs(names) == runs


def _layer() -> Any:
    """A peft LoRA ``Linear`` with two adapters whose ``B`` is not zero."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"to_q": torch.nn.Linear(16, 24)})
    for i, name in enumerate(("a", "b")):
        add_lora(model, name, rank=4, targets=("to_q",), multiplier=0.5 + i)
    layer: Any = model["to_q"]
    for name in ("a", "b"):
        torch.nn.init.normal_(layer.lora_B[name].weight, std=0.5)
    return layer


@pytest.mark.parametrize(
    "names",
    [
        [BASE_ADAPTER] * 2 + ["a"] * 2 + ["b"] * 2,  # a paths-major CFG batch
        [BASE_ADAPTER, "a", "b", BASE_ADAPTER],  # the guidance batch: one row per path, then the reference row
    ],
)
def test_run_slices_give_peft_mixed_batch_output_and_gradient(names: list[str]) -> None:
    layer = _layer()
    x = torch.randn(len(names), 5, 16)
    ours_in, peft_in = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = _project(layer, ours_in, names, adapter_runs(names))
    theirs = layer(peft_in, adapter_names=names)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(ours[2], layer.get_base_layer()(x[2]))  # the adapter really applies
    ours.square().sum().backward()  # type: ignore[no-untyped-call]
    theirs.square().sum().backward()
    assert ours_in.grad is not None and peft_in.grad is not None
    torch.testing.assert_close(ours_in.grad, peft_in.grad)


def test_disabled_adapters_fall_back_to_the_base_output() -> None:
    layer = _layer()
    layer.enable_adapters(False)
    names = [BASE_ADAPTER, "a"]
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(_project(layer, x, names, adapter_runs(names)), layer.get_base_layer()(x))
