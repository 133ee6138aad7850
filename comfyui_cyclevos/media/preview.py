"""A small animated overlay of a run's masks, built while the run goes: what the ComfyUI node shows in
itself when it finishes, and the picture its progress bar shows while it runs. It keeps thumbnails only
(at most ``max_frames`` of at most ``max_side`` pixels), so it costs little memory on long videos."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from .frames import fit_size, to_uint8
from .overlay import overlay


class OverlayPreview:
    """Thumbnails of every ``step``-th frame with its objects tinted and outlined (``video_io.overlay``)."""

    def __init__(self, frames: int, max_side: int = 320, max_frames: int = 60):
        if frames < 1:
            raise ValueError("a preview needs at least one frame")
        self.step = math.ceil(frames / max_frames)  # frames between two thumbnails
        self.max_side = int(max_side)
        self.thumbnails: dict[int, Image.Image] = {}  # frame index -> thumbnail
        self.latest: Image.Image | None = None

    def add(self, t: int, frame, ids: np.ndarray) -> bool:
        """Draws frame ``t`` ((H, W, 3) uint8 array or float tensor in 0..1) with its (H, W) ids when ``t``
        is one of the kept frames; returns whether it was."""
        if t % self.step:
            return False
        frame = to_uint8(frame)
        h, w = fit_size(ids.shape[:2], self.max_side)
        small = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((w, h), Image.BILINEAR))
        small_ids = np.asarray(Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).resize((w, h), Image.NEAREST))
        self.latest = self.thumbnails[t] = Image.fromarray(overlay(small, small_ids))
        return True

    def save_webp(self, path: str | os.PathLike, fps: float) -> None:
        """An animated WEBP of the thumbnails in video order, played at the video's speed."""
        if not self.thumbnails:
            raise ValueError("nothing to save: no frame was added to the preview")
        images = [self.thumbnails[t] for t in sorted(self.thumbnails)]
        duration = max(1, round(1000 * self.step / fps))  # ms per thumbnail
        images[0].save(
            path,
            format="WEBP",
            save_all=True,
            append_images=images[1:],
            duration=duration,
            loop=0,
            quality=80,
            method=0,
        )
