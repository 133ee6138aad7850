"""Small image filters shared by the modules that draw or refine maps."""
from __future__ import annotations

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
