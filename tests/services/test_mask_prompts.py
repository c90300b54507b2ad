"""Training requests' ``mask_prompts``: a point outside the image, an inverted box, or a prompt beside an uploaded
mask is a 422 that names the prompt."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.services.test_api import A, client, png, settings, upload

__all__ = ["client", "settings"]  # fixtures used by name below


@pytest.mark.parametrize(
    ("prompt", "field", "words"),
    [
        ({"point": [1.5, 0.5]}, "mask_prompts[0].point", "inside the image"),
        ({"box": [0.8, 0.1, 0.2, 0.9]}, "mask_prompts[0].box", "x0 < x1"),
        ({"box": [0.1, 0.9, 0.5, 0.2]}, "mask_prompts[0].box", "y0 < y1"),
        ({"box": [-0.1, 0.0, 0.5, 0.5]}, "mask_prompts[0].box", "0..1"),
        ({"point": [0.5, 0.5], "box": [0.1, 0.1, 0.9, 0.9]}, "mask_prompts[0]", "exactly one"),
    ],
)
def test_bad_mask_prompt_is_a_422_naming_it(
    client: TestClient, prompt: dict[str, Any], field: str, words: str
) -> None:
    image = upload(client, png())["id"]
    body = {"concept": {"name": "rex", "class_word": "dog"}, "images": [image], "mask_prompts": [prompt]}
    r = client.post("/v1/trainings", json=body, headers=A)
    assert r.status_code == 422, r.text
    errors = {e["field"]: e["message"] for e in r.json()["errors"]}
    assert field in errors and words in errors[field], errors


def test_prompt_beside_an_uploaded_mask_is_a_422(client: TestClient) -> None:
    image, mask = upload(client, png())["id"], upload(client, png(color=(255, 255, 255)))["id"]
    body = {
        "concept": {"name": "rex", "class_word": "dog"},
        "images": [image],
        "masks": [mask],
        "mask_prompts": [{"point": [0.5, 0.5]}],
    }
    r = client.post("/v1/trainings", json=body, headers=A)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "mask_prompts[0]"
    ok = client.post(
        "/v1/trainings", json={**body, "mask_prompts": [{"box": [0.1, 0.1, 0.9, 0.9]}], "masks": None}, headers=A
    )
    assert ok.status_code == 202, ok.text
