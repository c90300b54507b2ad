"""The optimizer step every training stage shares: warm-up then cosine learning rate, clipped step, smoothed loss."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """The learning-rate factor at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then a cosine
    from 1 down to 0.05."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: Iterable[torch.nn.Parameter],
    loss: torch.Tensor,
) -> None:
    """One step of every stage here: backward, clip the gradient norm at 1, step the optimizer and its schedule."""
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def smooth(previous: float, value: float, decay: float = 0.98) -> float:
    """An exponential moving average of a loss for progress reports; ``previous`` NaN starts it at ``value``."""
    return value if math.isnan(previous) else decay * previous + (1.0 - decay) * value
