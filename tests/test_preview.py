"""The animated overlay preview keeps few, small thumbnails however long the video."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from comfyui_cyclevos.media.preview import OverlayPreview


def test_a_long_video_keeps_at_most_max_frames_small_thumbnails_in_order(tmp_path) -> None:
    preview = OverlayPreview(200, max_side=32, max_frames=60)
    ids = np.zeros((90, 160), np.uint8)
    ids[10:40, 20:60] = 1
    for t in reversed(range(200)):  # a backward pass adds frames in reverse order
        frame = np.full((90, 160, 3), t, np.uint8)
        kept = preview.add(t, torch.from_numpy(frame).float() / 255 if t % 2 else frame, ids)
        assert kept == (t % preview.step == 0)
    assert preview.step == 4 and sorted(preview.thumbnails) == list(range(0, 200, 4))
    assert preview.latest is preview.thumbnails[0] and preview.latest.size == (32, 18)
    preview.save_webp(tmp_path / "p.webp", fps=20.0)
    shown = Image.open(tmp_path / "p.webp")
    corners, durations = [], []  # (the encoder may merge near-equal neighbours into one longer picture)
    for picture in ImageSequence.Iterator(shown):
        corners.append(np.asarray(picture.convert("RGB"))[-1, -1, 0])
        durations.append(picture.info["duration"])
    assert sum(durations) == 50 * 200  # 50 thumbnails, each 4 frames of a 20 fps video
    assert len(corners) > 10 and np.all(
        np.diff(np.asarray(corners, float)) > 0
    )  # background brightness t grows: video order


def test_an_empty_preview_is_not_saved(tmp_path) -> None:
    with pytest.raises(ValueError, match="no frame"):
        OverlayPreview(5).save_webp(tmp_path / "p.webp", 24.0)
