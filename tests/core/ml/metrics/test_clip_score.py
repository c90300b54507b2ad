"""CLIP-T and CLIP-I on tiny random CLIP: class words, the CLIPScore formula by hand, identities and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from core.errors import InvalidRequestError, UnknownConceptError
from core.ml.metrics.clip_score import CLIPSCORE_PREFIX, class_word_prompt, clip_i, clip_t
from core.ml.metrics.encoders import CLIP_FOLDER, EvalEncoders
from tests.core.ml.metrics.conftest import pattern_image


def test_class_word_prompt_replaces_every_reference() -> None:
    class_words = {"corgi": "dog", "tabby": "cat"}
    assert class_word_prompt("a <corgi> and a <tabby> on the beach", class_words) == "a dog and a cat on the beach"
    assert class_word_prompt("<corgi>  in the snow", class_words) == "dog in the snow"
    assert class_word_prompt("a photo of a dog", {}) == "a photo of a dog"
    with pytest.raises(UnknownConceptError, match="<husky>"):
        class_word_prompt("a <husky>", class_words)


def test_clip_t_scores_the_class_word_caption(encoders: EvalEncoders, generated: list[PIL.Image.Image]) -> None:
    with_ref = clip_t(encoders.clip, generated, ["a photo of a <corgi>"], class_words={"corgi": "dog"})
    assert with_ref == clip_t(encoders.clip, generated, ["a photo of a dog"])
    assert with_ref != clip_t(encoders.clip, generated, ["a photo of a cat"])
    with pytest.raises(UnknownConceptError):
        clip_t(encoders.clip, generated, ["a photo of a <corgi>"])


def _hand_features(model: CLIPModel, **inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        if "pixel_values" in inputs:
            out = model.get_image_features(**inputs)
        else:
            out = model.get_text_features(**inputs)
    # transformers 5 returns a model output whose pooler_output is the projected feature; 4.x returned the tensor.
    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return features.double().numpy()


def test_clip_t_is_clipscore_by_hand(encoders_root: Path, encoders: EvalEncoders) -> None:
    folder = encoders_root / CLIP_FOLDER
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    # 32x32 images need no resampling, so the HF processor gives the protocol's pixels.
    images = [pattern_image(seed, size=(32, 32)) for seed in range(4)]
    prompts = ["a photo of a <corgi>", "a <corgi> on the beach", "a red <corgi>", "a painting of a <corgi>"]
    for prefix in ("", CLIPSCORE_PREFIX):
        captions = [prefix + p.replace("<corgi>", "dog") for p in prompts]
        image_features = _hand_features(model, **processor(images=images, return_tensors="pt"))
        text_features = _hand_features(model, **tokenizer(captions, padding=True, return_tensors="pt"))
        scores = []
        for image_feature, text_feature in zip(image_features, text_features, strict=True):
            cosine = image_feature @ text_feature / np.linalg.norm(image_feature) / np.linalg.norm(text_feature)
            scores.append(2.5 * max(cosine, 0.0))
        result = clip_t(encoders.clip, images, prompts, class_words={"corgi": "dog"}, prefix=prefix)
        assert result == pytest.approx(float(np.mean(scores)), abs=1e-5)


def test_clip_i_of_identical_images_is_one(encoders: EvalEncoders, generated: list[PIL.Image.Image]) -> None:
    image = generated[:1]
    assert clip_i(encoders.clip, image, image) == pytest.approx(1.0, abs=1e-5)
    assert clip_i(encoders.clip, image * 3, image) == pytest.approx(1.0, abs=1e-5)


def test_scores_lie_in_their_ranges(
    encoders: EvalEncoders, generated: list[PIL.Image.Image], references: list[PIL.Image.Image]
) -> None:
    assert 0.0 <= clip_t(encoders.clip, generated, ["a dog"]) <= 2.5
    different = clip_i(encoders.clip, generated, references)
    assert -1.0 <= different < clip_i(encoders.clip, references, references) <= 1.0


def test_batched_and_one_by_one_agree(
    encoders: EvalEncoders, generated: list[PIL.Image.Image], references: list[PIL.Image.Image]
) -> None:
    prompts = [f"a {word} <corgi>" for word in ("red", "blue", "small", "large photo of the", "dark")]
    batched, single = (
        clip_t(encoders.clip, generated, prompts, class_words={"corgi": "dog"}, prefix=CLIPSCORE_PREFIX, batch_size=n)
        for n in (32, 1)
    )
    assert single == pytest.approx(batched, abs=1e-6)
    batched_i = clip_i(encoders.clip, generated, references)
    assert clip_i(encoders.clip, generated, references, batch_size=2) == pytest.approx(batched_i, abs=1e-6)


def test_bad_inputs_are_refused(encoders: EvalEncoders, generated: list[PIL.Image.Image]) -> None:
    with pytest.raises(InvalidRequestError, match="one prompt or one per image"):
        clip_t(encoders.clip, generated, ["a dog", "a cat"])
    with pytest.raises(InvalidRequestError, match="references"):
        clip_i(encoders.clip, generated, [])
    with pytest.raises(InvalidRequestError, match="batch_size"):
        clip_i(encoders.clip, generated, generated, batch_size=0)
