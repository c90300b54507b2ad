"""Regions on the latent grid: boxes, mask images, automatic layout."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from core.errors import InvalidRequestError
from core.ml.regions import auto_layout, region_masks


def test_masks_cover_exactly_the_requested_boxes() -> None:
    boxes = [(0.0, 0.25, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5)]
    masks, images = region_masks(boxes, width=128, height=64, scale_factor=8)
    assert masks.shape == (2, 1, 8, 16)
    for (x0, y0, x1, y1), image in zip(boxes, images, strict=True):
        assert image.mode == "L" and image.size == (128, 64)
        expected = np.zeros((64, 128), dtype=np.uint8)
        expected[round(y0 * 64) : round(y1 * 64), round(x0 * 128) : round(x1 * 128)] = 255
        assert np.array_equal(np.asarray(image), expected)


def test_box_edges_snap_to_latent_cells() -> None:
    _, images = region_masks([(0.3, 0.0, 1.0, 1.0)], width=64, height=64, scale_factor=8)
    columns = np.asarray(images[0])[0]
    assert columns[:16].max() == 0 and columns[16:].min() == 255  # round(0.3 * 8) = 2 cells = 16 px


def test_auto_layout_is_side_by_side() -> None:
    assert auto_layout(2) == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)]
    masks, images = region_masks([None, None], width=64, height=64, scale_factor=8)
    left, right = (np.asarray(i) for i in images)
    assert left[:, :32].min() == 255 and left[:, 32:].max() == 0
    assert right[:, :32].max() == 0 and right[:, 32:].min() == 255
    assert masks.sum() == 64


def test_mask_image_region() -> None:
    drawn = np.zeros((200, 100), dtype=np.uint8)
    drawn[100:, :] = 255  # bottom half, at another size than the output
    masks, images = region_masks([PIL.Image.fromarray(drawn)], width=64, height=64, scale_factor=8)
    assert masks[0, 0, :4].sum() == 0 and masks[0, 0, 4:].min() == 1
    assert np.asarray(images[0])[32:].min() == 255


@pytest.mark.parametrize(
    "region",
    [(0.5, 0.0, 0.4, 1.0), (0.0, 0.0, 1.5, 1.0), (0.0, 0.0, 0.01, 1.0), PIL.Image.new("L", (64, 64))],
)
def test_bad_or_empty_regions_name_the_field(region: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        region_masks([None, region], width=64, height=64, scale_factor=8)  # type: ignore[list-item]
    assert info.value.field == "concepts[1].region"
