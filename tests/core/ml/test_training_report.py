"""The trainer reports what it saw as a typed ``TrainingReport``; the adapter's ``training_options`` keep the same
facts for provenance, and an adapter read back from its file has no report."""

from __future__ import annotations

from core.ml.edlora.adapter import EDLoRAWeights, adapter_from_bytes, adapter_to_bytes, loss_curve


def test_the_report_holds_the_facts_the_adapter_keeps(corgi: EDLoRAWeights, tabby: EDLoRAWeights) -> None:
    for weights in (corgi, tabby):
        report, options = weights.report, weights.training_options
        assert report is not None
        assert report.attention_in_mask == options["attention_in_mask_during_training"]
        assert report.attention_on_other_objects == options["attention_on_other_objects_during_training"]
        assert report.examples_with_other_objects == options["examples_with_other_objects"] == 0
        assert report.separation_other_term == options["separation_other_term"]
    # tabby trains with masks and the separation loss on: the in-mask share was measured, the other term idle.
    assert tabby.report is not None and tabby.report.attention_in_mask
    assert tabby.report.separation_other_term == "no_other_objects"
    assert adapter_from_bytes(adapter_to_bytes(tabby)).report is None


def test_the_loss_curve_has_every_step_of_a_short_training_and_at_most_100_points_of_a_long_one(
    corgi: EDLoRAWeights,
) -> None:
    assert corgi.report is not None
    steps = [step for step, _ in corgi.report.loss_curve]
    assert steps == list(range(1, corgi.training_options["max_train_steps"] + 1))
    assert corgi.report.loss_curve[-1][1] == round(corgi.training_options["final_loss"], 6)

    losses = [float(i) for i in range(1, 251)]  # 250 steps: runs of 3, the last one of 1
    curve = loss_curve(losses)
    assert len(curve) == 84 and curve[0] == (3, 2.0) and curve[-1] == (250, 250.0)
    assert [step for step, _ in loss_curve(losses[:100])] == list(range(1, 101))
    assert loss_curve([]) == ()
