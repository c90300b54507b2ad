"""Multi-concept fusion: how several ED-LoRA concepts are combined in one image (``regional`` for now)."""
