"""Concept masks: the real segment-anything package with a tiny SAM (point, box, automatic), the colour segmenter,
the default choice of the concept, clean-up, and user masks bypassing the segmenter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from core.errors import ModelLoadError
from core.ml.masks.cleanup import clean_mask, enclosed_region, fill_holes, label_components, remove_islands
from core.ml.masks.sam import TINY_SAM_FILE, SamSegmenter, build_tiny_sam, load_segmenter
from core.ml.masks.segmenter import ColourSegmenter, ConceptMasks, compute_masks, select_concept
from core.schemas import MaskPrompt
from tessera_shapes import drawing, sampling, world


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory, _one_torch_thread: None) -> SamSegmenter:
    segmenter = load_segmenter("tiny", tmp_path_factory.mktemp("models"))
    assert isinstance(segmenter, SamSegmenter)
    return segmenter


def _photo() -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 60, size=(48, 80, 3), dtype=np.uint8)
    pixels[12:36, 30:54] = (220, 40, 40)
    return PIL.Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("prompt", "source"),
    [
        (MaskPrompt(point=(0.5, 0.5)), {"point", "whole_image"}),
        (MaskPrompt(box=(0.3, 0.2, 0.7, 0.8)), {"box", "whole_image"}),
        (None, {"auto", "whole_image"}),
    ],
)
def test_tiny_sam_runs_every_route_through_the_package(
    tiny_sam: SamSegmenter, prompt: MaskPrompt | None, source: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_generate, real_predict = tiny_sam.generator.generate, tiny_sam.predictor.predict

    def generate(array: np.ndarray) -> list[dict[str, object]]:
        calls.append("auto")
        return list(real_generate(array))

    def predict(**kwargs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        calls.append("predict")
        return tuple(real_predict(**kwargs))  # type: ignore[return-value]

    monkeypatch.setattr(tiny_sam.generator, "generate", generate)
    monkeypatch.setattr(tiny_sam.predictor, "predict", predict)
    masks = tiny_sam.segment(_photo(), prompt)
    assert masks.concept.shape == masks.others.shape == (48, 80) and masks.concept.dtype == bool
    assert masks.source in source and masks.concept.any()
    assert not (masks.concept & masks.others).any()
    assert calls == (["auto"] if prompt is None else ["auto", "predict"])


def test_tiny_sam_is_built_deterministically_and_stored(tmp_path: Path) -> None:
    a, b = build_tiny_sam().state_dict(), build_tiny_sam().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    load_segmenter("tiny", tmp_path)
    assert (tmp_path / "tiny" / "sam" / TINY_SAM_FILE).is_file()


def test_sd15_without_its_checkpoint_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"sam_vit_h_4b8939\.pth"):
        load_segmenter("sd15", tmp_path)


def test_user_masks_bypass_the_segmenter() -> None:
    class Refuses:
        def segment(self, image: PIL.Image.Image, prompt: MaskPrompt | None) -> ConceptMasks:
            raise AssertionError("the segmenter must not run for an uploaded mask")

    mask = PIL.Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    result = compute_masks(Refuses(), [_photo()], user_masks=[mask])
    assert result[0].source == "user" and result[0].concept.shape == (48, 80)
    assert result[0].concept.mean() == pytest.approx(0.25, abs=0.02) and not result[0].others.any()


def test_colour_segmenter_finds_the_prompted_concept_and_the_other_object() -> None:
    concept = world.concept("purple_star")
    scene = sampling.place_objects(
        (concept.spec.at("left"), world.BASE_OBJECTS[0].at("right")), sampling.scene_rng(0, 0)
    )
    image = drawing.render_scene(scene)
    x, y = scene.objects[0].centre
    masks = ColourSegmenter().segment(image, MaskPrompt(point=(x / 64, y / 64)))
    assert masks.source == "point"
    assert masks.concept[:, :32].sum() > 0.9 * masks.concept.sum()
    assert masks.others[:, 32:].sum() > 0 and not masks.others[:, :20].any()
    box = ColourSegmenter().segment(image, MaskPrompt(box=(0.5, 0.0, 1.0, 1.0)))
    assert box.concept[:, 32:].sum() > 0.9 * box.concept.sum()


def test_default_choice_is_the_large_central_mask_not_a_part_or_the_background() -> None:
    def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        m = np.zeros((100, 100), bool)
        m[y0:y1, x0:x1] = True
        return m

    background = ~rect(30, 30, 70, 70)
    subject, part, off_centre = rect(30, 30, 70, 70), rect(45, 45, 55, 55), rect(0, 0, 30, 25)
    assert select_concept([background, part, off_centre, subject], None) == 3
    assert select_concept([background], None) is None
    assert select_concept([subject, part], MaskPrompt(point=(0.5, 0.5))) == 0


def test_clean_up_fills_holes_drops_islands_and_dilates() -> None:
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    mask[50, 50] = False  # a pin-hole
    mask[2, 2] = True  # a speck
    labels, areas = label_components(mask)
    assert len(areas) == 3 and labels[2, 2] != labels[20, 20]
    assert fill_holes(mask, 10)[50, 50] and not remove_islands(mask, 10)[2, 2]
    cleaned = clean_mask(mask)
    assert cleaned[50, 50] and not cleaned[2, 2] and cleaned[19, 50] and not cleaned[10, 50]


def test_the_enclosed_region_of_a_ring_is_a_disc_and_soft_edges_stay() -> None:
    # The separation loss reads this region: a ring's hole belongs to the ring, however large the hole.
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    ring = torch.from_numpy(((radius > 6) & (radius < 12)).astype(np.float32))
    ring[0, 0] = 0.25  # a soft pixel on the border: kept as it is
    masks = torch.stack([ring, torch.zeros(64, 64)])[:, None]  # [2, 1, 64, 64]: a ring and an empty mask

    region = enclosed_region(masks)

    assert region.shape == masks.shape
    assert region[0, 0, 32, 32] == 1.0 and region[0, 0, 30:35, 30:35].min() == 1.0  # the hole is filled
    assert region[0, 0, 0, 0] == 0.25 and region[0, 0, 32, 50] == 0.0  # border and outside unchanged
    assert float(region[1].sum()) == 0.0
