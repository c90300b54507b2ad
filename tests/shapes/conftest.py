"""Shapes-world tests run offline: an accidental hub download fails fast instead of hanging.

The evaluation tests run on the tiny preset; its fixtures are the ML tests' own, imported here because this
folder sits beside ``tests/core`` rather than under it (pytest finds fixtures by name in a conftest's namespace).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from tests.core.ml.conftest import _one_torch_thread, components, models_root, unchanged

__all__ = ["_one_torch_thread", "components", "models_root", "unchanged"]
