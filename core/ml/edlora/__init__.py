"""ED-LoRA (Mix-of-Show): layer-wise concept embeddings plus LoRA on text-encoder and UNet attention.

Only the torch-free options schema (``core.training_options``) is re-exported here; import
``core.ml.edlora.trainer`` / ``.adapter`` by name.
"""

from core.training_options import EDLoRAConfig

__all__ = ["EDLoRAConfig"]
