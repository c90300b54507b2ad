"""All three metrics for one concept, from images in memory and from folders."""

from __future__ import annotations

from pathlib import Path

import PIL.Image
import pytest
import torch

from core.errors import InvalidRequestError, ModelLoadError
from core.ml.metrics.clip_score import CLIPSCORE_PREFIX, clip_i, clip_t
from core.ml.metrics.dino import dino_score
from core.ml.metrics.encoders import EvalEncoders, load_eval_encoders
from core.ml.metrics.evaluation import evaluate_concept_images, run_concept_eval


def test_scores_match_the_single_metrics(
    encoders: EvalEncoders, generated: list[PIL.Image.Image], references: list[PIL.Image.Image]
) -> None:
    class_words = {"corgi": "dog"}
    scores = evaluate_concept_images(encoders, generated, references, ["a <corgi> on the beach"], class_words)
    assert set(scores) == {"clip_t", "clip_t_prefixed", "clip_i", "dino", "n_images"}
    assert scores["n_images"] == len(generated)
    prompt = ["a dog on the beach"]
    assert scores["clip_t"] == pytest.approx(clip_t(encoders.clip, generated, prompt), abs=1e-9)
    prefixed = clip_t(encoders.clip, generated, prompt, prefix=CLIPSCORE_PREFIX)
    assert scores["clip_t_prefixed"] == pytest.approx(prefixed, abs=1e-9)
    assert scores["clip_i"] == pytest.approx(clip_i(encoders.clip, generated, references), abs=1e-9)
    assert scores["dino"] == pytest.approx(dino_score(encoders.dino, generated, references), abs=1e-9)


def test_run_concept_eval_reads_folders(
    encoders_root: Path,
    encoders: EvalEncoders,
    tmp_path: Path,
    generated: list[PIL.Image.Image],
    references: list[PIL.Image.Image],
) -> None:
    generated_dir, references_dir = tmp_path / "generated", tmp_path / "references"
    for folder, images in ((generated_dir, generated), (references_dir, references)):
        folder.mkdir()
        for i, image in enumerate(images):
            image.save(folder / f"{i}.png")
    (generated_dir / "notes.txt").write_text("not an image")
    scores = run_concept_eval(encoders_root, generated_dir, references_dir, "a <corgi> on the beach", "dog")
    # PNG is lossless, so the files give the numbers of the images in memory.
    in_memory = evaluate_concept_images(encoders, generated, references, ["a <corgi> on the beach"], {"corgi": "dog"})
    assert scores == pytest.approx(in_memory, abs=1e-9)


def test_run_concept_eval_refuses_missing_inputs(encoders_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidRequestError, match="holds no images") as info:
        run_concept_eval(encoders_root, empty, empty, "a <corgi>", "dog")
    assert info.value.field == "generated_dir"
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    PIL.Image.new("RGB", (8, 8)).save(image_dir / "0.png")
    with pytest.raises(ModelLoadError, match="tessera models pull"):
        run_concept_eval(tmp_path / "no-encoders", image_dir, image_dir, "a <corgi>", "dog")


def test_inputs_follow_the_model_dtype(
    encoders_root: Path, encoders: EvalEncoders, generated: list[PIL.Image.Image], references: list[PIL.Image.Image]
) -> None:
    # bfloat16 stands in for the GPU's half precision: pixels and tokens must be cast to the weights' dtype, and
    # the scores (computed in float64 from float32 embeddings) stay close to the fp32 ones.
    half = load_eval_encoders(encoders_root, dtype=torch.bfloat16)
    assert half.clip.model.dtype == half.dino.model.dtype == torch.bfloat16
    args = (generated, references, ["a <corgi>"], {"corgi": "dog"})
    assert evaluate_concept_images(half, *args) == pytest.approx(evaluate_concept_images(encoders, *args), abs=3e-2)
