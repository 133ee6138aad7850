"""Palette PNGs of object ids, and mp4 writers of masks and overlays. Every writer goes through a temporary file renamed into place only when
complete, so an interrupted run never leaves a file that looks finished. Encoding uses imageio-ffmpeg's ffmpeg."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from .masks import mask_from_array
from .overlay import overlay
from .palette import DAVIS_PALETTE

VIDEO_OUT_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv"})  # containers that take h264
DEFAULT_FPS = 24.0  # for writers fed from a folder of frames, which has no frame rate


def _partial_name(path: Path, suffix: str = "") -> Path:
    """A hidden, unique temporary name beside ``path`` so os.replace stays on one filesystem."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except OSError:
            pass


def write_palette_png(path: str | os.PathLike[str], ids: np.ndarray) -> None:
    """Save ids as an 8-bit palette PNG (DAVIS colours), atomically: a crash never leaves half a file."""
    a = mask_from_array(ids)
    im = Image.fromarray(a)
    im.putpalette(DAVIS_PALETTE.tobytes())
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(out)
    try:
        with open(tmp, "xb") as f:
            im.save(f, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        _unlink(tmp)
        raise


class _VideoWriter:
    """h264/yuv420p through imageio-ffmpeg into a hidden temporary file, renamed into place by close().

    yuv420p needs even sizes, so an odd height or width is padded by one repeated row/column (the
    file is then one pixel larger than ``size``) rather than rescaled.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float | None, size: tuple[int, int], quality: float = 8):
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_OUT_EXTENSIONS:
            raise InputError(f"cannot write video {self.path}: the name must end in .mp4, .mov or .mkv")
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.size = (int(size[0]), int(size[1]))
        self.quality = quality
        self.frames = 0
        self._gen: Any = None
        self._tmp: Path | None = None
        self._done = False

    def _start(self) -> None:
        import imageio_ffmpeg

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _partial_name(self.path, self.path.suffix)  # ffmpeg picks the container from the suffix
        h, w = self.size
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp),
            (w + w % 2, h + h % 2),
            fps=self.fps,
            quality=self.quality,
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
        )
        self._gen.send(None)  # starts ffmpeg

    def _write_rgb(self, rgb: np.ndarray) -> None:
        if self._done:
            raise ValueError(f"writer for {self.path} is already closed")
        a = np.asarray(rgb)
        if a.shape != (*self.size, 3) or a.dtype != np.uint8:
            raise ValueError(f"frame {a.shape} {a.dtype} does not match the video size {(*self.size, 3)} uint8")
        if self._gen is None:
            self._start()
        h, w = self.size
        if h % 2 or w % 2:
            a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        self._gen.send(np.ascontiguousarray(a))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place; with no frames written nothing is saved (ValueError)."""
        if self._done:
            return
        self._done = True
        if self._gen is None:
            raise ValueError(f"no frames were written; {self.path} was not created")
        try:
            self._gen.close()  # waits for ffmpeg to finish the file
            assert self._tmp is not None
            if not self._tmp.is_file() or self._tmp.stat().st_size == 0:
                raise OSError(f"ffmpeg did not produce {self.path}")
            os.replace(self._tmp, self.path)
        except BaseException:
            _unlink(self._tmp)
            raise

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; the target path is left untouched."""
        if self._done:
            return
        self._done = True
        try:
            if self._gen is not None:
                self._gen.close()
        except Exception:
            pass
        finally:
            _unlink(self._tmp)

    def __enter__(self) -> _VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        try:
            self.abort()
        except Exception:
            pass


class MaskVideoWriter(_VideoWriter):
    """mp4 of id masks drawn in DAVIS palette colours; ``write(ids)`` with ids (H, W)."""

    def write(self, ids: np.ndarray) -> None:
        self._write_rgb(DAVIS_PALETTE[mask_from_array(ids)])

    def __enter__(self) -> MaskVideoWriter:
        return self


class OverlayVideoWriter(_VideoWriter):
    """mp4 of frames with the masks overlaid; ``write(frame, ids)`` (or ``write(rgb)`` for a ready image)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | None,
        size: tuple[int, int],
        alpha: float = 0.5,
        quality: float = 8,
    ):
        super().__init__(path, fps, size, quality)
        self.alpha = alpha

    def write(self, frame: np.ndarray, ids: np.ndarray | None = None) -> None:
        self._write_rgb(frame if ids is None else overlay(frame, ids, self.alpha))

    def __enter__(self) -> OverlayVideoWriter:
        return self
