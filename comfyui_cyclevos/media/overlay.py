"""Masks drawn over frames: a tinted fill and a boundary line per object, in the palette colours."""

from __future__ import annotations

import numpy as np

from .masks import mask_from_array
from .palette import DAVIS_PALETTE


def _boundary(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """Object pixels within ``width`` of a pixel with another id (4-neighbourhood)."""
    inner = np.ones(ids.shape, bool)
    dv = ids[1:, :] == ids[:-1, :]
    dh = ids[:, 1:] == ids[:, :-1]
    inner[1:] &= dv
    inner[:-1] &= dv
    inner[:, 1:] &= dh
    inner[:, :-1] &= dh
    for _ in range(width - 1):  # erode the interior further for a thicker line
        e = inner.copy()
        e[1:] &= inner[:-1]
        e[:-1] &= inner[1:]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        inner = e
    return ~inner & (ids > 0)


def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5, boundary: int = 1) -> np.ndarray:
    """(H, W, 3) uint8: objects tinted with their palette colour, outlined ``boundary`` px in a darker shade."""
    f = np.asarray(frame)
    m = mask_from_array(ids)
    if f.ndim != 3 or f.shape[2] != 3 or f.shape[:2] != m.shape:
        raise ValueError(f"frame {f.shape} and mask {m.shape} do not match; expected (H, W, 3) and (H, W)")
    out = f.astype(np.uint8, copy=True)
    fg = m > 0
    if fg.any():
        colour = DAVIS_PALETTE[m[fg]].astype(np.float32)
        out[fg] = np.clip(f[fg] * (1.0 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
        if boundary > 0:
            edge = _boundary(m, boundary)
            out[edge] = DAVIS_PALETTE[m[edge]] // 2
    return out
