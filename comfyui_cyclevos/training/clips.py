"""Training clips from fully annotated DAVIS-layout sequences (paper §4.1 and STM's main training).

A clip is 3 frames in temporal order (the earliest is the reference), at most ``max_skip`` apart, with:
a random scale/crop/flip per clip and a small affine jitter per frame; colour jitter; and, to teach
several ids and distractors on single-object data, an object cut from another sequence (its own 3
frames, so it moves as it really did) pasted on top, tracked as object 2 or left as untracked background.
Augmentation runs in torch (``grid_sample``) on frames held in memory as uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..media.davis import list_sequences, load_sequence


@dataclass
class ClipConfig:
    frames: int = 3
    crop: int = 224
    scale: tuple[float, float] = (0.8, 1.3)  # relative to fitting the frame's short side to the crop
    jitter_rotate: float = 10.0  # degrees, per frame
    jitter_scale: float = 0.08
    jitter_shift: float = 0.06  # fraction of the crop
    paste_prob: float = 0.6
    paste_tracked_prob: float = 0.6
    paste_scale: tuple[float, float] = (0.4, 0.9)
    static_prob: float = 0.1  # pseudo-clip from one frame and three affine warps (STM pre-training)
    reverse_prob: float = 0.0
    objects: int = 2  # objects per clip in a batch (unused ones are marked invalid)


class ClipSampler:
    """Draws batches of augmented clips: frames (B, T, 3, S, S) in 0..1, masks (B, O, T, S, S) in {0,1},
    valid (B, O) bool."""

    def __init__(self, root: str, cfg: ClipConfig = ClipConfig(), sequences: list[str] | None = None):
        self.cfg = cfg
        self.names = sequences or list_sequences(root)
        self.frames, self.labels = [], []
        for name in self.names:
            x, y = load_sequence(root, name)
            self.frames.append(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())  # (T, 3, H, W) uint8
            self.labels.append(torch.from_numpy((y > 0).astype(np.uint8)))  # (T, H, W) binary (DAVIS-16)

    def _indices(self, n: int, max_skip: int, g: torch.Generator) -> list[int]:
        T = self.cfg.frames
        if n < T:
            return sorted(int(i) for i in torch.randint(0, n, (T,), generator=g))
        gaps = [int(torch.randint(1, max_skip + 1, (1,), generator=g)) for _ in range(T - 1)]
        span = sum(gaps)
        if span > n - 1:  # shrink proportionally, keeping every gap >= 1
            gaps = [max(1, int(gp * (n - 1) / span)) for gp in gaps]
            span = sum(gaps)
        start = int(torch.randint(0, n - span, (1,), generator=g))
        idx = [start]
        for gp in gaps:
            idx.append(idx[-1] + gp)
        return idx

    def _raw_clip(self, seq: int, max_skip: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.frames[seq])
        if float(torch.rand(1, generator=g)) < self.cfg.static_prob:
            i = int(torch.randint(0, n, (1,), generator=g))
            idx = [i] * self.cfg.frames
        else:
            idx = self._indices(n, max_skip, g)
            if float(torch.rand(1, generator=g)) < self.cfg.reverse_prob:
                idx = idx[::-1]
        x = self.frames[seq][idx].float() / 255  # (T, 3, H, W)
        y = self.labels[seq][idx].float()  # (T, H, W)
        return x, y

    def _affines(
        self, y0: torch.Tensor, size_hw: tuple[int, int], g: torch.Generator, scale_range, centre_on_object: bool
    ) -> torch.Tensor:
        """Per-frame 2x3 matrices for affine_grid (output crop coords -> input normalised coords)."""
        cfg = self.cfg
        H, W = size_hw
        S = cfg.crop

        def u(a: float, b: float) -> float:
            return a + (b - a) * float(torch.rand(1, generator=g))

        # zoom: crop covers (S / fit) input pixels where fit maps the short side onto S, times 1/scale
        fit = S / min(H, W)
        s = fit * u(*scale_range)  # output pixels per input pixel
        half_w, half_h = (S / s) / W, (S / s) / H  # half extent of the crop in normalised input coords
        if centre_on_object and y0.sum() > 0:
            ys, xs = torch.nonzero(y0 > 0.5, as_tuple=True)
            cx = float(xs.float().mean()) / (W - 1) * 2 - 1
            cy = float(ys.float().mean()) / (H - 1) * 2 - 1
            cx += u(-0.6, 0.6) * half_w
            cy += u(-0.6, 0.6) * half_h
        else:
            cx, cy = u(-1, 1), u(-1, 1)
        cx = min(max(cx, -1 + half_w), 1 - half_w) if half_w < 1 else 0.0
        cy = min(max(cy, -1 + half_h), 1 - half_h) if half_h < 1 else 0.0
        flip = -1.0 if float(torch.rand(1, generator=g)) < 0.5 else 1.0
        mats = []
        for _ in range(cfg.frames):
            a = math.radians(u(-cfg.jitter_rotate, cfg.jitter_rotate))
            k = 1 + u(-cfg.jitter_scale, cfg.jitter_scale)
            tx, ty = u(-cfg.jitter_shift, cfg.jitter_shift) * 2, u(-cfg.jitter_shift, cfg.jitter_shift) * 2
            # jitter in crop space, then crop space -> input space
            R = torch.tensor(
                [[math.cos(a) * k, -math.sin(a) * k, tx], [math.sin(a) * k, math.cos(a) * k, ty], [0, 0, 1]]
            )
            C = torch.tensor([[half_w * flip, 0, cx], [0, half_h, cy], [0, 0, 1]])
            mats.append((C @ R)[:2])
        return torch.stack(mats)  # (T, 2, 3)

    def _warp(self, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S = self.cfg.crop
        grid = F.affine_grid(theta, [x.shape[0], 3, S, S], align_corners=False)
        xw = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        yw = F.grid_sample(y[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
        return xw, (yw > 0.5).float()

    def _colour(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        def u(a: float, b: float) -> float:
            return a + (b - a) * float(torch.rand(1, generator=g))

        b, c, s = u(0.75, 1.25), u(0.75, 1.25), u(0.7, 1.3)
        grey = x.mean(1, keepdim=True)
        x = grey + (x - grey) * s
        x = (x - x.mean()) * c + x.mean()
        x = x * b + torch.randn(x.shape[0], 3, 1, 1, generator=g) * 0.02
        return x.clamp(0, 1)

    def sample(self, batch: int, max_skip: int, g: torch.Generator):
        cfg = self.cfg
        T, O, S = cfg.frames, cfg.objects, cfg.crop
        frames = torch.zeros(batch, T, 3, S, S)
        masks = torch.zeros(batch, O, T, S, S)
        valid = torch.zeros(batch, O, dtype=torch.bool)
        for b in range(batch):
            for _attempt in range(10):
                seq = int(torch.randint(0, len(self.frames), (1,), generator=g))
                x, y = self._raw_clip(seq, max_skip, g)
                theta = self._affines(y[0], x.shape[-2:], g, cfg.scale, centre_on_object=True)
                x, y = self._warp(x, y, theta)
                if y[0].sum() >= 0.002 * S * S:
                    break
            x = self._colour(x, g)
            objs = [y]
            if float(torch.rand(1, generator=g)) < cfg.paste_prob and len(self.frames) > 1:
                other = int(torch.randint(0, len(self.frames) - 1, (1,), generator=g))
                other += other >= seq
                x2, y2 = self._raw_clip(other, max_skip, g)
                theta2 = self._affines(y2[0], x2.shape[-2:], g, cfg.paste_scale, centre_on_object=False)
                x2, y2 = self._warp(x2, y2, theta2)
                x2 = self._colour(x2, g)
                covered = y * (1 - y2)
                if y2[0].sum() >= 0.002 * S * S and covered[0].sum() >= 0.5 * y[0].sum():
                    alpha = y2[:, None]
                    x = x * (1 - alpha) + x2 * alpha
                    objs = [covered]
                    if float(torch.rand(1, generator=g)) < cfg.paste_tracked_prob:
                        objs.append(y2)
            frames[b] = x
            for o, m in enumerate(objs[:O]):
                masks[b, o] = m
                valid[b, o] = True
        return frames, masks, valid
