"""Everything that runs a diffusion model: components, ED-LoRA training and adapters, multi-concept fusion.

Importing this package (or ``core.ml.edlora``) loads no torch. The API imports nothing from here: the training
options schema lives in ``core.training_options`` and the shared limits in ``core.rules``. The torch-backed modules
are imported by name:

- ``core.ml.components``: model presets on disk and ``SDComponents`` (load_components, init_preset).
- ``core.ml.edlora``: ``adapter`` (file format), ``trainer`` (train_edlora) and the
  pieces they share (``attention``, ``embeddings``, ``lora``).
- ``core.ml.fusion.regional``: regionally composed multi-concept sampling (generate_regional).
- ``core.ml.regions``: boxes, masks and the automatic layout; ``core.ml.prompts``: concept references in prompts.
"""
