"""The trainer reports what it saw as a typed ``TrainingReport``; the adapter's ``training_options`` keep the same
facts for provenance, and an adapter read back from its file has no report."""

from __future__ import annotations

from core.ml.edlora.adapter import EDLoRAWeights, adapter_from_bytes, adapter_to_bytes


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
