"""Shapes-world tests run offline: an accidental hub download fails fast instead of hanging."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
