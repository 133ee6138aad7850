"""Small image filters shared by the modules that draw, refine or score maps: a Gaussian blur (torch) and a
dilation by a disk (numpy, as the DAVIS boundary measure does it)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur over the last two dims of (..., H, W), edges replicated (so a frame's
    border is not an edge); sigma 0 returns ``x`` as it is. Float32 out."""
    if sigma <= 0:
        return x
    r = max(1, int(round(truncate * sigma)))
    k = torch.exp(-((torch.arange(-r, r + 1, dtype=torch.float32, device=x.device) / sigma) ** 2) / 2)
    k = k / k.sum()
    shape = x.shape
    y = x.float().reshape(-1, 1, *shape[-2:])
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(shape)


def _disk_half_widths(radius: int) -> list[int]:
    """Half-width of each row (dy = -r..r) of the disk {x*x + y*y <= r*r}.

    That set is ``skimage.morphology.disk(r)``, the structuring element the official code dilates with
    (through ``cv2.dilate``). It is not ``cv2.getStructuringElement(MORPH_ELLIPSE, ...)``, whose rows are
    narrower for some radii. Integer square roots keep the edge rows exact.
    """
    return [math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)]


def disk(radius: int) -> np.ndarray:
    """The (2r+1, 2r+1) boolean disk used as structuring element; for inspection and tests."""
    size = 2 * radius + 1
    out = np.zeros((size, size), dtype=bool)
    for row, half in enumerate(_disk_half_widths(radius)):
        out[row, radius - half : radius + half + 1] = True
    return out


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by ``disk(radius)``; pixels outside the image count as background (as in cv2).

    The disk is a stack of horizontal runs, so the dilation is the OR of at most 2r+1 vertically
    shifted run-dilations, each taken from one row-wise cumulative sum: O(r * H * W) and no Python
    loop over pixels.
    """
    m = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return m.copy()
    h, w = m.shape
    halves = _disk_half_widths(radius)
    # Cumulative row sums of the mask padded by `radius` zero columns each side: the count of set pixels
    # in columns [x - k, x + k] is then a difference of two slices.
    csum = np.zeros((h, w + 2 * radius + 1), dtype=np.int32)
    np.cumsum(m, axis=1, out=csum[:, radius + 1 : radius + 1 + w])
    csum[:, radius + 1 + w :] = csum[:, radius + w : radius + 1 + w]
    runs: dict[int, np.ndarray] = {}
    out = np.zeros_like(m)
    for dy, k in zip(range(-radius, radius + 1), halves):
        if abs(dy) >= h:
            continue
        run = runs.get(k)
        if run is None:
            run = csum[:, radius + k + 1 : radius + k + 1 + w] > csum[:, radius - k : radius - k + w]
            runs[k] = run
        # Output row y takes the run-dilation of source row y + dy.
        if dy >= 0:
            out[: h - dy] |= run[dy:]
        else:
            out[-dy:] |= run[: h + dy]
    return out
