"""The bundled demo clip (DAVIS "bear", CC BY-NC 4.0: see README.md here) and its first-frame mask."""

from __future__ import annotations

from pathlib import Path


def demo_clip() -> tuple[Path, Path]:
    """(video, first-frame mask) of the bundled demo clip."""
    here = Path(__file__).resolve().parent
    return here / "bear.mp4", here / "bear-mask.png"
