"""The shapes world: a toy, exactly scorable image domain for a tiny SD-1.5-shaped model.

``world`` draws captioned scenes of flat shapes, ``scorer`` judges images against the objects a prompt
asks for (``near_misses`` and ``calibration`` set its thresholds), ``tokenizer`` builds the word-level CLIP
tokenizer, ``training`` trains the preset, ``evaluation`` measures the base model and the decoder's ceiling,
``personalization`` learns and fuses concepts with the service's ED-LoRA pipelines, and ``report`` and ``figure``
write the evaluation report. ``world`` and ``scorer`` need only numpy and Pillow.

This is tooling beside the service, not part of it: it builds on ``core``, and ``core``, the API and the worker
never import it (``tests/test_layering.py``); only the ``tessera`` command loads it, lazily, in the commands that
need it (``tessera shapes ...``, ``tessera demo``). The preset it trains ships in ``core/ml/presets/shapes``.
"""
