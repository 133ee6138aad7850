"""Synthetic training clips from single images with object masks (DUTS-TR, ECSSD): STM's static-image
pretraining, made harder with look-alike distractors.

One draw makes a T-frame clip: a background image, then 1-3 foreground cut-outs from other images, each
tracked under its own id, and (with ``distractor_prob``) one UNTRACKED look-alike, either a second copy of
a tracked cut-out under its own motion or a cut-out from another image recoloured toward a tracked
object's colours: the memory read must then keep two similar things apart, the failure DAVIS shows most
(spectators in red beside a red dancer). With ``own_background_prob`` the first object is not cut out but
stays in its own photograph, which is the background. Every layer moves by its own per-frame random affine
(rotation, scale, shear, shift) around a base placement, plus a smooth non-rigid warp; the clip is
flipped, colour-jittered and some frames blurred. All randomness comes from the ``torch.Generator`` passed
in: a seed fixes the clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InputError
from ..filters import gaussian_blur

IMAGE_SUFFIXES = (".jpg", ".jpeg")


@dataclass
class StaticClipConfig:
    frames: int = 3
    crop: int = 192
    objects: int = 3  # most tracked objects per clip; a batch pads to this
    object_counts: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(1 object), P(2), P(3)
    object_size: tuple[float, float] = (0.25, 0.8)  # cut-out's longer side, fraction of the crop
    own_background_prob: float = 0.3
    distractor_prob: float = 0.5
    copy_prob: float = 0.5  # a distractor is a second copy of a tracked cut-out, else a recoloured one
    rotate: float = 15.0  # degrees, per frame around the base placement
    scale: float = 0.15  # relative, per frame
    shear: float = 0.1
    shift: float = 0.08  # fraction of the crop, per frame
    warp: float = 0.02  # non-rigid displacement, fraction of the crop (standard deviation, upper bound)
    blur_prob: float = 0.3  # per frame
    min_area: float = 0.004  # a tracked object must cover this fraction of the first frame


@dataclass
class StaticClip:
    frames: torch.Tensor  # (T, 3, S, S) float 0..1
    masks: torch.Tensor  # (n, T, S, S) float {0, 1}, one row per tracked object
    distractor: torch.Tensor  # (T, S, S) bool: where the untracked look-alike is visible


def find_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs under ``root``: every .jpg with a .png of the same name anywhere below it."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"{root} is not a folder: --static takes folders of images (.jpg) and masks (.png of the same name)"
        )
    images = {p.stem: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in root.rglob("*.png")}
    pairs = [(images[s], masks[s]) for s in sorted(images) if s in masks]
    if not pairs:
        raise InputError(
            f"{root} holds no image with a mask: put each .jpg beside (or in a sibling folder of) a .png of the same name"
        )
    return pairs


def _uniform(g: torch.Generator, a: float, b: float) -> float:
    return a + (b - a) * float(torch.rand(1, generator=g))


def _choice(g: torch.Generator, n: int) -> int:
    return int(torch.randint(0, n, (1,), generator=g))


class StaticClipSampler:
    """Draws batches like ``data.ClipSampler``: frames (B, T, 3, S, S) in 0..1, masks (B, O, T, S, S) in
    {0, 1}, valid (B, O) bool. Images are decoded when drawn (nothing is preloaded)."""

    def __init__(self, roots: list[str | Path], cfg: StaticClipConfig = StaticClipConfig()):
        self.cfg = cfg
        self.pairs = [p for root in roots for p in find_pairs(root)]
        S = cfg.crop
        c = torch.arange(S, dtype=torch.float32) + 0.5  # pixel centres
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        self._canvas = torch.stack([xx, yy], -1)  # (S, S, 2) canvas pixel coordinates (x, y)

    # one source image -------------------------------------------------------------------------
    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(4, H, W) float: RGB in 0..1 and the binary mask; None when the mask is nearly empty."""
        img_path, mask_path = self.pairs[i]
        with Image.open(img_path) as im:
            rgb = np.asarray(im.convert("RGB"))
        with Image.open(mask_path) as im:
            m = np.asarray(im.convert("L")) > 127
        if m.shape != rgb.shape[:2] or m.mean() < 0.01:
            return None
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
        return torch.cat([x, torch.from_numpy(m).float()[None]])

    def _draw_source(self, g: torch.Generator) -> torch.Tensor:
        for _ in range(20):
            src = self._load(_choice(g, len(self.pairs)))
            if src is not None:
                return src
        raise InputError("no usable image with a mask was found in 20 draws: check the --static folders")

    # geometry ---------------------------------------------------------------------------------
    def _grid(
        self,
        g: torch.Generator,
        src_hw: tuple[int, int],
        centre_src: tuple[float, float],
        scale: float,
        centre_canvas: tuple[float, float],
        motion: float,
    ) -> torch.Tensor:
        """Sampling grids (T, S, S, 2) for grid_sample: canvas pixel p -> source pixel
        A_t^-1 (p + d_t(p) - c_t) + c_src, with A_t = rotation * shear * scale drawn per frame around
        the base ``scale`` and ``centre_canvas`` (``motion`` scales the per-frame spread), d_t smooth."""
        cfg, S = self.cfg, self.cfg.crop
        H, W = src_hw
        theta0 = _uniform(g, -cfg.rotate, cfg.rotate)
        inv, shift = [], []
        for _ in range(cfg.frames):
            a = math.radians(theta0 + motion * _uniform(g, -cfg.rotate, cfg.rotate))
            k = scale * (1 + motion * _uniform(g, -cfg.scale, cfg.scale))
            sh = motion * _uniform(g, -cfg.shear, cfg.shear)
            rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            inv.append(torch.linalg.inv(rot @ torch.tensor([[1.0, sh], [0.0, 1.0]]) * k))  # canvas -> source
            shift.append(
                [
                    centre_canvas[0] + motion * _uniform(g, -cfg.shift, cfg.shift) * S,
                    centre_canvas[1] + motion * _uniform(g, -cfg.shift, cfg.shift) * S,
                ]
            )
        sigma = torch.tensor([motion * _uniform(g, 0, cfg.warp) * S for _ in range(cfg.frames)])
        d = torch.randn(cfg.frames, 2, 4, 4, generator=g) * sigma[:, None, None, None]  # canvas pixels
        d = F.interpolate(d, size=(S, S), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)  # (T, S, S, 2)
        q = self._canvas + d - torch.tensor(shift)[:, None, None]  # (T, S, S, 2)
        p = torch.einsum("tyxj,tij->tyxi", q, torch.stack(inv)) + torch.tensor(centre_src)  # source pixels
        return torch.stack([p[..., 0] / W * 2 - 1, p[..., 1] / H * 2 - 1], -1)

    def _place_object(self, g: torch.Generator, src: torch.Tensor) -> torch.Tensor:
        """A cut-out at a random size and place: warped (T, 4, S, S), zero outside the source."""
        cfg, S = self.cfg, self.cfg.crop
        ys, xs = torch.nonzero(src[3] > 0.5, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        scale = _uniform(g, *cfg.object_size) * S / max(y1 - y0, x1 - x0)
        centre = (_uniform(g, 0.2, 0.8) * S, _uniform(g, 0.2, 0.8) * S)
        grid = self._grid(g, src.shape[-2:], ((x0 + x1) / 2, (y0 + y1) / 2), scale, centre, 1.0)
        return F.grid_sample(
            src.expand(cfg.frames, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    def _place_background(self, g: torch.Generator, src: torch.Tensor) -> torch.Tensor:
        """A whole image filling the crop, with a smaller camera motion: (T, 4, S, S)."""
        cfg, S = self.cfg, self.cfg.crop
        H, W = src.shape[-2:]
        scale = S / min(H, W) * _uniform(g, 1.0, 1.5)
        centre = (W / 2 + _uniform(g, -0.15, 0.15) * W, H / 2 + _uniform(g, -0.15, 0.15) * H)
        grid = self._grid(g, (H, W), centre, scale, (S / 2, S / 2), 0.4)
        return F.grid_sample(
            src.expand(cfg.frames, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )

    # colour -----------------------------------------------------------------------------------
    @staticmethod
    def _jitter(x: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
        """Brightness, contrast, saturation and a colour cast on (..., 3, H, W)."""
        b = 1 + strength * _uniform(g, -0.25, 0.25)
        c = 1 + strength * _uniform(g, -0.25, 0.25)
        s = 1 + strength * _uniform(g, -0.3, 0.3)
        grey = x.mean(-3, keepdim=True)
        x = grey + (x - grey) * s
        mean = x.mean()
        x = (x - mean) * c + mean
        cast = torch.randn(3, 1, 1, generator=g) * 0.03 * strength
        return (x * b + cast).clamp(0, 1)

    @staticmethod
    def _recolour(src: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``src``'s object given the per-channel mean and spread of ``like``'s object (both (4, H, W))."""

        def stats(t):
            m = t[3] > 0.5
            px = t[:3, m]  # (3, N)
            return px.mean(1)[:, None, None], px.std(1)[:, None, None].clamp(min=0.02)

        (mu_s, sd_s), (mu_l, sd_l) = stats(src), stats(like)
        rgb = ((src[:3] - mu_s) / sd_s * sd_l + mu_l).clamp(0, 1)
        return torch.cat([rgb, src[3:]])

    # one clip ---------------------------------------------------------------------------------
    def clip(self, g: torch.Generator, distractor: bool | None = None) -> StaticClip:
        """One clip; ``distractor`` forces (True) or forbids (False) the untracked look-alike."""
        for _ in range(50):
            out = self._compose(g, distractor)
            if out is not None:
                return out
        raise InputError("50 synthetic clips in a row had no visible object: check the masks in the --static folders")

    def _coloured(self, src: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return torch.cat([self._jitter(src[:3], g, 0.6), src[3:]])

    def _compose(self, g: torch.Generator, distractor: bool | None) -> StaticClip | None:
        """None when no tracked object keeps ``min_area`` on the first frame (covered by later layers)."""
        cfg, S, T = self.cfg, self.cfg.crop, self.cfg.frames
        n = int(torch.multinomial(torch.tensor(cfg.object_counts[: cfg.objects]), 1, generator=g)) + 1
        sources = [self._draw_source(g) for _ in range(n)]
        own = float(torch.rand(1, generator=g)) < cfg.own_background_prob
        bg = self._place_background(g, sources[0] if own else self._draw_source(g))  # (T, 4, S, S)
        x = self._jitter(bg[:, :3], g, 0.5)  # (T, 3, S, S)
        ids = torch.zeros(T, S, S, dtype=torch.long)  # the visible id at each pixel; -1: the distractor
        if own:  # object 1 stays in its photograph, which is the background
            ids[bg[:, 3] > 0.5] = 1
        layers = [
            (i + 1, self._place_object(g, self._coloured(src, g)))
            for i, src in enumerate(sources)
            if not (own and i == 0)
        ]
        if distractor is None:
            distractor = float(torch.rand(1, generator=g)) < cfg.distractor_prob
        if distractor:
            like = sources[_choice(g, n)]
            if float(torch.rand(1, generator=g)) < cfg.copy_prob:
                look = self._coloured(like, g)  # a second copy of a tracked object, under its own motion
            else:
                look = self._recolour(self._draw_source(g), like)
            layers.insert(_choice(g, len(layers) + 1), (-1, self._place_object(g, look)))
        for obj_id, layer in layers:  # z-order: later layers cover earlier ones
            alpha = layer[:, 3:]  # (T, 1, S, S)
            x = x * (1 - alpha) + layer[:, :3] * alpha
            ids[alpha[:, 0] > 0.5] = obj_id
        x = self._jitter(x, g, 0.5)
        for t in range(T):
            if float(torch.rand(1, generator=g)) < cfg.blur_prob:
                x[t] = gaussian_blur(x[t], _uniform(g, 0.4, 1.5), truncate=2.0)
        if float(torch.rand(1, generator=g)) < 0.5:
            x, ids = x.flip(-1), ids.flip(-1)
        kept = [k for k in range(1, n + 1) if float((ids[0] == k).float().mean()) >= cfg.min_area]
        if not kept:
            return None
        masks = torch.stack([(ids == k).float() for k in kept])  # (n', T, S, S)
        return StaticClip(x.clamp(0, 1), masks, ids == -1)

    def sample(self, batch: int, max_skip: int, g: torch.Generator):
        """A batch of clips; ``max_skip`` is ignored (a static clip has no time gap)."""
        cfg = self.cfg
        T, O, S = cfg.frames, cfg.objects, cfg.crop
        frames = torch.zeros(batch, T, 3, S, S)
        masks = torch.zeros(batch, O, T, S, S)
        valid = torch.zeros(batch, O, dtype=torch.bool)
        for b in range(batch):
            c = self.clip(g)
            frames[b] = c.frames
            masks[b, : len(c.masks)] = c.masks
            valid[b, : len(c.masks)] = True
        return frames, masks, valid
