"""Typed job plans: made at submission, stored with the record, read back as models (also from the dict form that
records stored before plans were typed hold)."""

from __future__ import annotations

from typing import Any

from core.job_record import JobRecord
from core.plans import BoxRegion, GenerationPlan, MaskRegion, TrainingPlan

ACCEPTED_GENERATION: dict[str, Any] = {
    "prompt": "<cpt_1> and <rex>",
    "negative_prompt": "blurry",
    "fusion": "regional",
    "width": 64,
    "height": 48,
    "num_inference_steps": 20,
    "guidance_scale": 4.0,
    "seed": 77,
    "num_outputs": 2,
}
CONCEPT: dict[str, Any] = {
    "concept_id": "cpt_1",
    "name": "tabby",
    "class_word": "cat",
    "adapter_key": "t/adapters/cpt_1",
    "adapter_sha256": "ab",
    "weight": 0.7,
}


def _record(kind: str, plan: dict[str, Any], accepted: dict[str, Any]) -> JobRecord:
    raw = {"id": "job_1", "tenant": "t", "kind": kind, "queue": "q", "input": accepted, "plan": plan}
    return JobRecord.model_validate_json(JobRecord.model_validate(raw).model_dump_json())


def test_a_stored_generation_dict_plan_is_read_as_the_typed_plan_with_the_accepted_values() -> None:
    legacy = {
        "prompt": "<tabby> and <rex>",
        "concepts": [
            {**CONCEPT, "region": {"box": [0.0, 0.0, 0.5, 1.0]}},
            {**CONCEPT, "concept_id": "cpt_2", "name": "rex", "region": {"mask_key": "t/files/m"}},
        ],
        "layout": None,
        "style": {"image_key": "t/files/s", "scale": 0.5, "mode": "style", "control": {"type": "depth", "scale": 0.6}},
    }
    plan = _record("generation", legacy, ACCEPTED_GENERATION).plan
    assert isinstance(plan, GenerationPlan)
    assert (plan.prompt, plan.negative_prompt, plan.fusion) == ("<tabby> and <rex>", "blurry", "regional")
    assert plan.sampling.model_dump() == {
        name: ACCEPTED_GENERATION[name]
        for name in ("width", "height", "num_inference_steps", "guidance_scale", "seed", "num_outputs")
    }
    assert plan.concepts[0].region == BoxRegion(box=(0.0, 0.0, 0.5, 1.0))
    assert plan.concepts[1].region == MaskRegion(mask_key="t/files/m")
    assert plan.style is not None and plan.style.control.type == "depth" and plan.layout is None


def test_a_stored_training_dict_plan_is_read_as_the_typed_plan() -> None:
    accepted = {
        "concept": {"name": "rex", "class_word": "dog"},
        "images": ["f1", "f2"],
        "mask_prompts": [{"point": [0.5, 0.5]}, None],
        "captions": None,
        "options": {"max_train_steps": 7},
        "composites": None,
    }
    legacy = {"concept_id": "cpt_9", "image_keys": ["k1", "k2"], "mask_keys": None, "neighbours": None}
    plan = _record("training", legacy, accepted).plan
    assert isinstance(plan, TrainingPlan)
    assert plan.concept_id == "cpt_9" and plan.concept.name == "rex" and plan.image_keys == ["k1", "k2"]
    assert plan.options.max_train_steps == 7
    assert plan.mask_prompts is not None and plan.mask_prompts[0] is not None and plan.mask_prompts[1] is None


def test_typed_plans_round_trip_by_their_kind_and_records_without_one_have_none() -> None:
    sampling = {name: ACCEPTED_GENERATION[name] for name in ("width", "height", "num_inference_steps", "seed")}
    typed = {
        "kind": "generation",
        "fusion": "conductor",
        "prompt": "<tabby>",
        "negative_prompt": "",
        "concepts": [CONCEPT],
        "sampling": {**sampling, "guidance_scale": 7.5, "num_outputs": 1},
    }
    plan = _record("generation", typed, {}).plan
    assert isinstance(plan, GenerationPlan) and plan.concepts[0].region is None
    assert _record("generation", {}, {}).plan is None
    assert JobRecord(id="job_2", tenant="t", kind="training", queue="q", input={}).plan is None
