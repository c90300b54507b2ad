"""Batched k-means on the device: many clustering problems and many random restarts in one set of tensor ops.

Concept Conductor clusters self-attention rows (one ``tokens``-dimensional feature per latent position) with 100
restarts per problem. Here every restart of every problem advances together (Lloyd iterations as batched matmuls),
with a fixed iteration count so nothing waits on the host, and the restart with the lowest inertia wins.
"""

from __future__ import annotations

import torch


def kmeans(
    features: torch.Tensor,
    k: int,
    *,
    restarts: int,
    iterations: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cluster each problem's points into ``k`` groups and return the labels of the best restart.

    Args:
        features: ``[S, n, d]``: S independent problems of n points in d dimensions.
        k: clusters per problem (``k <= n``).
        restarts: random initialisations per problem (distinct points drawn from a CPU ``generator``, so labels are
            the same on every device for the same seed up to float rounding).
        iterations: Lloyd steps; a cluster that loses all its points keeps its centre.

    Returns:
        ``[S, n]`` int64 labels in ``0..k-1``.
    """
    s, n, _ = features.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be within 1..{n}, got {k}")
    x = features.float()
    draws = torch.rand(s, restarts, n, generator=generator).argsort(dim=-1)[..., :k].to(x.device)  # [S, R, k]
    centres = torch.gather(
        x[:, None].expand(s, restarts, n, x.shape[-1]), 2, draws[..., None].expand(-1, -1, -1, x.shape[-1])
    )  # [S, R, k, d]
    norms = (x * x).sum(-1)[:, None, :, None]  # [S, 1, n, 1]
    for _ in range(iterations):
        labels = _assign(x, centres, norms)  # [S, R, n]
        one_hot = torch.nn.functional.one_hot(labels, k).to(x.dtype)  # [S, R, n, k]
        counts = one_hot.sum(dim=2)[..., None]  # [S, R, k, 1]
        sums = torch.einsum("srnk,snd->srkd", one_hot, x)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    distances = _distances(x, centres, norms)  # [S, R, n, k]
    best, labels = distances.min(dim=-1)
    inertia = best.sum(dim=-1)  # [S, R]
    winner = inertia.argmin(dim=-1)  # [S]
    return labels[torch.arange(s, device=x.device), winner]


def _distances(x: torch.Tensor, centres: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    # ||x - c||² = ||x||² - 2 x·c + ||c||², as one batched matmul instead of an [S, R, n, k, d] difference tensor.
    dots = torch.einsum("snd,srkd->srnk", x, centres)
    return (norms - 2 * dots + (centres * centres).sum(-1)[:, :, None, :]).clamp(min=0)


def _assign(x: torch.Tensor, centres: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    return _distances(x, centres, norms).argmin(dim=-1)
