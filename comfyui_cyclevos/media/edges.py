"""Edge controls on written id maps, per object: grow or shrink, fill holes, remove specks, feather.

Artists fix the same things on every video-mask tool's output: a mask a few pixels tight or loose, holes
where the object's texture looked like background, specks of the object elsewhere, and a hard edge that
shows after compositing. These work on (H, W) uint8 id maps (0 = background) so that objects never
overlap: growing only takes background pixels, and a hole is filled only when background alone fills it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..filters import dilate_disk, gaussian_blur


@dataclass(frozen=True)
class EdgeConfig:
    grow: int = 0  # pixels; negative shrinks
    fill_holes: bool = False
    min_area: int = 0  # pieces of an object smaller than this (pixels) are removed
    feather: float = 0.0  # sigma in pixels of the soft edge (soft masks only)

    @property
    def changes_ids(self) -> bool:
        return bool(self.grow or self.fill_holes or self.min_area)


def components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a (H, W) bool mask -> (H, W) int64 labels (the smallest flat index of
    each component; -1 outside the mask). Union-find over the neighbour pairs, vectorised: each round
    hooks every pair's larger root under the smaller, then compresses paths by pointer jumping; rounds
    grow with log(component size), not with its diameter."""
    H, W = mask.shape
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    idx = torch.arange(H * W).view(H, W)
    right = m[:, :-1] & m[:, 1:]
    down = m[:-1] & m[1:]
    u = torch.cat([idx[:, :-1][right], idx[:-1][down]])
    v = torch.cat([idx[:, 1:][right], idx[1:][down]])
    parent = torch.arange(H * W)
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not bool(differ.any()):
            break
        lo, hi = torch.minimum(pu[differ], pv[differ]), torch.maximum(pu[differ], pv[differ])
        parent.scatter_reduce_(0, hi, lo, reduce="amin")
        while True:  # path compression
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped
    out = parent.view(H, W).numpy().copy()
    out[~mask] = -1
    return out


def _touches_border(labels: np.ndarray) -> set[int]:
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return set(np.unique(edge[edge >= 0]).tolist())


def refine_ids(ids: np.ndarray, cfg: EdgeConfig) -> np.ndarray:
    """(H, W) uint8 ids -> refined ids: specks removed, holes filled, then grown or shrunk, per object."""
    out = np.array(ids, dtype=np.uint8, copy=True)
    objects = [int(i) for i in np.unique(out) if i]
    if cfg.min_area > 0:
        for k in objects:
            lab = components(out == k)
            sizes = np.bincount(lab[lab >= 0].ravel())
            out[(lab >= 0) & (sizes[np.maximum(lab, 0)] < cfg.min_area)] = 0
    if cfg.fill_holes:
        for k in objects:
            lab = components(out != k)
            border = _touches_border(lab)
            hole_labels = [l for l in np.unique(lab[lab >= 0]) if l not in border]
            for l in hole_labels:
                region = lab == l
                if not out[region].any():  # background only: another object inside stays
                    out[region] = k
    if cfg.grow > 0:
        grown = out.copy()
        for k in objects:
            grown[dilate_disk(out == k, cfg.grow) & (out == 0) & (grown == 0)] = k
        out = grown
    elif cfg.grow < 0:
        for k in objects:
            inside = out == k
            out[inside & dilate_disk(~inside, -cfg.grow)] = 0
    return out


def soft_mask(ids: np.ndarray, object_ids: list[int] | None, feather: float) -> torch.Tensor:
    """(H, W) float32 mask of ``object_ids`` (all objects when None), edges blurred by a Gaussian of
    sigma ``feather`` pixels inside the frame (the frame's border is not treated as an edge)."""
    m = torch.from_numpy(np.isin(ids, object_ids) if object_ids is not None else ids > 0).float()
    return gaussian_blur(m, feather).clamp(0, 1)
