"""Between a frame's own size and the network's processing size: resize so that the short side is
``size`` (the paper's 240), pad to a multiple of 16, and back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError

FLOAT_SLACK = 1e-3  # float frames a little outside 0..1 (resampling overshoot) are clamped, not refused


def to_frame_tensor(frame) -> torch.Tensor:
    """(H, W, 3) uint8 array or tensor, or float array or tensor in 0..1 -> (1, 3, H, W) float32 tensor.

    Anything else is refused before it reaches the network (where a NaN would spread into memory and lose
    the objects for the rest of the video): NaN or infinite values, floats outside 0..1 (e.g. 0..255), and
    other integer types (e.g. uint16)."""
    if isinstance(frame, np.ndarray):
        frame = np.ascontiguousarray(frame)
        frame = frame if frame.flags.writeable else frame.copy()  # decoders give read-only arrays
    t = torch.from_numpy(frame) if isinstance(frame, np.ndarray) else frame
    if not isinstance(t, torch.Tensor):
        raise InputError(f"a frame must be an (H, W, 3) array or tensor, got {type(frame).__name__}")
    if t.ndim != 3 or t.shape[2] != 3:
        raise InputError(f"a frame must be (H, W, 3) RGB, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div(255).permute(2, 0, 1)[None]
    if not t.is_floating_point():
        raise InputError(
            f"a frame is {t.dtype}: give uint8 (0..255) or float (0..1) frames, e.g. frame / 65535 for 16-bit"
        )
    t = t.float()
    if t.numel():
        if not bool(torch.isfinite(t).all()):
            raise InputError("a frame holds NaN or infinite values: give finite float frames in 0..1")
        lo, hi = torch.aminmax(t)
        if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            raise InputError(
                f"a float frame holds values from {float(lo):.3g} to {float(hi):.3g}: float frames must be in 0..1 "
                "(divide 0..255 frames by 255)"
            )
        t = t.clamp(0, 1)
    return t.permute(2, 0, 1)[None]


@dataclass(frozen=True)
class Geometry:
    frame: tuple[int, int]  # (H, W) of the video
    scaled: tuple[int, int]  # (h, w) after resizing
    padded: tuple[int, int]  # (Hp, Wp), multiples of 16

    @classmethod
    def for_frame(cls, H: int, W: int, size: int) -> Geometry:
        """``size`` 0 keeps the frame's own size."""
        if size:
            k = size / min(H, W)
            h, w = max(16, round(H * k)), max(16, round(W * k))
        else:
            h, w = H, W
        return cls((H, W), (h, w), (h + (-h) % 16, w + (-w) % 16))

    def frame_in(self, frame, device: torch.device) -> torch.Tensor:
        """A frame at the video's size -> (1, 3, Hp, Wp) on ``device``."""
        x = to_frame_tensor(frame)
        if tuple(x.shape[-2:]) != self.frame:
            H, W = x.shape[-2:]
            raise InputError(
                f"a frame is {W}x{H} but the video's first frame was {self.frame[1]}x{self.frame[0]}: all frames must have one size"
            )
        if self.scaled != self.frame:
            x = F.interpolate(x, size=self.scaled, mode="bilinear", align_corners=False, antialias=True)
        return self._pad(x, "replicate").to(device)

    def masks_in(self, masks: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(O, H, W) masks at the video's size -> (1, O, Hp, Wp) soft masks (zero in the padding)."""
        m = masks[None].float()
        if self.scaled != self.frame:
            m = F.interpolate(m, size=self.scaled, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return self._pad(m, "constant").to(device)

    def maps_out(self, maps: torch.Tensor) -> torch.Tensor:
        """(1, C, Hp, Wp) -> (C, H, W) float32 on the CPU."""
        p = maps[:, :, : self.scaled[0], : self.scaled[1]].float()
        if self.scaled != self.frame:
            p = F.interpolate(p, size=self.frame, mode="bilinear", align_corners=False)
        return p[0].cpu()

    def _pad(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        ph, pw = self.padded[0] - self.scaled[0], self.padded[1] - self.scaled[1]
        return F.pad(x, (0, pw, 0, ph), mode=mode) if (ph or pw) else x
