"""Concept masks refined from self-attention, as Concept Conductor does between its guidance and late steps.

Each latent position's row of head-averaged self-attention (at the mask layer) is a feature that groups positions
belonging to the same object. For every concept, the positions of its own path and of the base path are clustered
(k-means for every ``k`` in ``P..2P-1``, ``P`` = number of paths); of all clusters, the one that overlaps the
concept's previous mask of that kind most (IoU) is kept, or the previous mask's bounding box when even the best
overlap is below ``overlap_threshold``. The concept's new mask is the union of its custom and base clusters.
Positions claimed by several concepts keep their previous owner, so masks stay disjoint; a concept whose new mask
would be empty keeps its previous one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.ml.fusion.kmeans import kmeans


@dataclass
class MaskTracks:
    """The previously chosen clusters, per concept and image, at the mask layer's resolution.

    Args:
        custom: ``[K, B, tokens]`` bool: the cluster picked from each concept's own path.
        base: ``[K, B, tokens]`` bool: the cluster picked from the base path for that concept.
    """

    custom: torch.Tensor
    base: torch.Tensor

    @classmethod
    def start(cls, masks: torch.Tensor, grid: tuple[int, int]) -> MaskTracks:
        """Both tracks from the initial masks ``[K, B, h, w]`` (downsampled to ``grid`` with a 0.5 threshold)."""
        small = downsample(masks, grid)
        return cls(custom=small.clone(), base=small.clone())


def downsample(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[K, B, h, w]`` 0/1 masks → ``[K, B, gh·gw]`` bool: a cell is in when at least half of it is."""
    k, b, h, w = masks.shape
    small = F.adaptive_avg_pool2d(masks.reshape(k * b, 1, h, w).float(), grid) >= 0.5
    return small.reshape(k, b, grid[0] * grid[1])


def _iou(candidates: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """IoU of ``[B, C, L]`` candidate masks with ``[B, L]`` previous masks → ``[B, C]``."""
    inter = (candidates & previous[:, None]).sum(-1).float()
    union = (candidates | previous[:, None]).sum(-1).float()
    return inter / union.clamp(min=1)


def _bounding_box(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, L]`` bool masks → the bool masks of their bounding boxes (an empty mask stays empty)."""
    grids = masks.view(-1, *grid)
    rows, cols = grids.any(dim=2), grids.any(dim=1)  # [B, gh], [B, gw]

    def span(present: torch.Tensor) -> torch.Tensor:
        index = torch.arange(present.shape[-1], device=present.device)
        first = torch.where(present, index, present.shape[-1]).min(dim=-1, keepdim=True).values
        last = torch.where(present, index, -1).max(dim=-1, keepdim=True).values
        return (index >= first) & (index <= last)

    return (span(rows)[:, :, None] & span(cols)[:, None, :]).reshape(masks.shape)


def _pick(candidates: torch.Tensor, previous: torch.Tensor, threshold: float, grid: tuple[int, int]) -> torch.Tensor:
    iou = _iou(candidates, previous)  # [B, C]
    best, index = iou.max(dim=-1)
    chosen = candidates[torch.arange(candidates.shape[0], device=candidates.device), index]  # [B, L]
    keep_box = (best < threshold)[:, None]
    return torch.where(keep_box, _bounding_box(previous, grid), chosen)


def refine_masks(
    probs: torch.Tensor,
    masks: torch.Tensor,
    tracks: MaskTracks,
    grid: tuple[int, int],
    *,
    cluster_counts: Sequence[int],
    restarts: int,
    iterations: int,
    overlap_threshold: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, MaskTracks]:
    """One refinement of the concept masks from the mask layer's self-attention.

    Args:
        probs: ``[P, B, L, L]`` head-averaged self-attention of each path's conditional rows (path 0 = base),
            ``L = grid[0] · grid[1]``.
        masks: current concept masks on the latent grid, ``[K, B, h, w]`` 0/1 (``K = P − 1``), disjoint.
        tracks: the clusters chosen last time (``MaskTracks.start`` before the first refinement).
        grid: the mask layer's ``(gh, gw)``.
        cluster_counts: the ``k`` values to cluster with.
        restarts, iterations: k-means restarts per problem and Lloyd steps.
        overlap_threshold: below this IoU the previous mask's bounding box is used instead of a cluster.
        generator: CPU generator for the k-means initialisations.

    Returns:
        ``(masks, tracks)``: new disjoint ``[K, B, h, w]`` masks in ``masks``' dtype, and the updated tracks.
    """
    paths, batch, tokens, _ = probs.shape
    feats = probs.reshape(paths * batch, tokens, tokens)
    candidates = []
    for k in cluster_counts:
        labels = kmeans(feats, min(k, tokens), restarts=restarts, iterations=iterations, generator=generator)
        candidates.append(F.one_hot(labels, min(k, tokens)).bool().transpose(1, 2))  # [P·B, k, L]
    clusters = torch.cat(candidates, dim=1).view(paths, batch, -1, tokens)  # [P, B, C, L]
    custom = torch.stack([_pick(clusters[i + 1], tracks.custom[i], overlap_threshold, grid) for i in range(paths - 1)])
    base = torch.stack([_pick(clusters[0], tracks.base[i], overlap_threshold, grid) for i in range(paths - 1)])
    claims_small = (custom | base).view(paths - 1, batch, *grid).float()
    claims = F.interpolate(claims_small, size=masks.shape[-2:], mode="nearest").bool()  # [K, B, h, w]
    previous = masks.bool()
    count = claims.sum(dim=0)
    sole = claims & (count == 1)[None]
    contested = (count > 1)[None] & previous
    new = sole | contested
    empty = ~new.flatten(2).any(dim=-1)  # [K, B]
    if bool(empty.any()):
        # A concept never vanishes: it keeps its previous mask, and takes those cells back from the others.
        kept = previous & empty[..., None, None]
        new = torch.where(empty[..., None, None], previous, new & ~kept.any(dim=0, keepdim=True))
    return new.to(masks.dtype), MaskTracks(custom=custom, base=base)
