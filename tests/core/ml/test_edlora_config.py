"""The training options schema (also the API's ``options``): bounds, unknown names, no torch import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from core.training_options import EDLoRAConfig


def test_defaults_follow_mix_of_show() -> None:
    config = EDLoRAConfig()
    assert (config.rank, config.alpha, config.max_train_steps) == (4, 1.0, 500)
    assert (config.lr_embedding, config.lr_text_encoder, config.lr_unet) == (1e-3, 1e-5, 1e-4)
    assert config.noise_offset == 0.01 and config.embedding_norm_threshold == 0.55
    # The separation loss defaults are the ablation's best (bench/separation_ablation.py, see the config docstring).
    assert (config.separation_loss_weight, config.separation_fill_weight, config.separation_max_timestep) == (
        1.0,
        0.0,
        1000,
    )
    assert all(field.description for field in EDLoRAConfig.model_fields.values())


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_train_steps": 0}, "max_train_steps"),
        ({"max_train_steps": 5001}, "max_train_steps"),
        ({"rank": 129}, "rank"),
        ({"separation_loss_weight": 1.5}, "separation_loss_weight"),
        ({"resolution": 100}, "resolution"),
        ({"resolution": 32}, "resolution"),
        ({"learning_rate": 1e-4}, "learning_rate"),
    ],
)
def test_out_of_bounds_and_unknown_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        EDLoRAConfig.model_validate(options)
    assert info.value.errors()[0]["loc"] == (field,)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        EDLoRAConfig().rank = 8  # type: ignore[misc]


def test_config_modules_import_no_torch() -> None:
    code = "import sys, core.ml, core.ml.edlora, core.training_options; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
