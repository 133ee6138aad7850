"""Palette PNGs of object ids, and mp4 writers of masks and overlays. Every writer goes through a temporary file renamed into place only when
complete, so an interrupted run never leaves a file that looks finished. Encoding uses imageio-ffmpeg's ffmpeg."""

from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError
from .masks import mask_from_array
from .output_dir import MARK, clean_stale_partials, partial_name
from .overlay import overlay
from .palette import DAVIS_PALETTE

VIDEO_OUT_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv"})  # containers that take h264
DEFAULT_FPS = 24.0  # for writers fed from a folder of frames, which has no frame rate


def _partial_name(path: Path, suffix: str = "") -> Path:
    """A hidden, unique temporary name beside ``path`` so os.replace stays on one filesystem."""
    return partial_name(path, suffix)


def _unlink(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except OSError:
            pass


def output_error(e: OSError, path: str | os.PathLike) -> InputError:
    """A failed write (disk full, a read-only or vanished folder) as the one-line error of the commands."""
    reason = e.strerror or str(e) or type(e).__name__
    return InputError(f"cannot write {path}: {reason}; free some space or choose a writable output")


def write_palette_png(path: str | os.PathLike[str], ids: np.ndarray) -> None:
    """Save ids as an 8-bit palette PNG (DAVIS colours), atomically: a crash never leaves half a file."""
    a = mask_from_array(ids)
    im = Image.fromarray(a)
    im.putpalette(DAVIS_PALETTE.tobytes())
    out = Path(path)
    tmp = _partial_name(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as f:
            im.save(f, format="PNG")
        os.replace(tmp, out)
    except OSError as e:
        _unlink(tmp)
        raise output_error(e, out) from None
    except BaseException:
        _unlink(tmp)
        raise


def _h264_encoder() -> str:
    try:
        from imageio_ffmpeg._io import get_first_available_h264_encoder

        return get_first_available_h264_encoder()
    except Exception:  # a private helper: fall back to the encoder the bundled ffmpeg has
        return "libx264"


class _VideoWriter:
    """h264/yuv420p through imageio-ffmpeg's ffmpeg into a hidden temporary file, renamed into place by
    close() only when ffmpeg exited 0 (its exit status and last error line are checked: imageio-ffmpeg's own
    writer ignores them, so a full disk gave an unplayable file).

    yuv420p needs even sizes, so an odd height or width is padded by one repeated row/column (the
    file is then one pixel larger than ``size``) rather than rescaled. ``finish()`` ends ffmpeg and checks
    it, ``commit()`` renames the file into place (``close()`` does both), so a caller can publish a video
    together with other outputs.
    """

    def __init__(self, path: str | os.PathLike[str], fps: float | None, size: tuple[int, int], quality: float = 8):
        self.path = Path(path)
        if self.path.suffix.lower() not in VIDEO_OUT_EXTENSIONS:
            raise InputError(f"cannot write video {self.path}: the name must end in .mp4, .mov or .mkv")
        self.fps = float(fps) if fps else DEFAULT_FPS
        self.size = (int(size[0]), int(size[1]))
        self.quality = quality
        self.frames = 0
        self._proc: subprocess.Popen | None = None
        self._log: Any = None
        self._tmp: Path | None = None
        self._done = False
        self._finished = False

    def _command(self, path: Path) -> list[str]:
        import imageio_ffmpeg

        h, w = self.size
        fps = Fraction(self.fps).limit_denominator()
        codec = _h264_encoder()
        q = 1 - self.quality / 10.0  # as imageio-ffmpeg maps its quality: crf for libx264, else qscale
        rate = ["-crf", str(int(q * 51))] if codec == "libx264" else ["-qscale:v", str(int(q * 30) + 1)]
        return [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{w + w % 2}x{h + h % 2}",
            "-pix_fmt", "rgb24", "-r", str(fps), "-i", "-", "-an",
            "-vcodec", codec, "-pix_fmt", "yuv420p", *rate,
            "-metadata", f"comment={MARK.decode()}",
            "-v", "error", str(path),
        ]  # fmt: skip

    def _start(self) -> None:
        clean_stale_partials(self.path)
        self._tmp = _partial_name(self.path, self.path.suffix)  # ffmpeg picks the container from the suffix
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._log = tempfile.TemporaryFile()
            self._proc = subprocess.Popen(
                self._command(self._tmp), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log
            )
        except OSError as e:
            raise output_error(e, self.path) from None

    def _ffmpeg_error(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1][:200] if lines else ""

    def _write_rgb(self, rgb: np.ndarray) -> None:
        if self._done or self._finished:
            raise ValueError(f"writer for {self.path} is already closed")
        a = np.asarray(rgb)
        if a.shape != (*self.size, 3) or a.dtype != np.uint8:
            raise ValueError(f"frame {a.shape} {a.dtype} does not match the video size {(*self.size, 3)} uint8")
        if self._proc is None:
            self._start()
        h, w = self.size
        if h % 2 or w % 2:
            a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            self._proc.stdin.write(np.ascontiguousarray(a).tobytes())
        except OSError:  # ffmpeg died (e.g. the disk is full): its own message says why
            self._proc.wait()
            reason = self._ffmpeg_error() or f"exit status {self._proc.returncode}"
            raise InputError(
                f"cannot write video {self.path}: ffmpeg stopped ({reason}); free some space or choose another path"
            ) from None
        self.frames += 1

    def finish(self) -> None:
        """End ffmpeg and check the file (exit status 0, not empty); the file stays under its hidden name."""
        if self._finished:
            return
        if self._done:
            raise ValueError(f"writer for {self.path} was aborted")
        if self._proc is None:
            self._done = True
            raise ValueError(f"no frames were written; {self.path} was not created")
        try:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            code = self._proc.wait()
            assert self._tmp is not None
            if code != 0:
                raise InputError(
                    f"cannot write video {self.path}: ffmpeg failed ({self._ffmpeg_error() or f'exit status {code}'}); "
                    "free some space or choose another path"
                )
            if not self._tmp.is_file() or self._tmp.stat().st_size == 0:
                raise InputError(f"cannot write video {self.path}: ffmpeg did not produce it")
        except BaseException:
            self._done = True
            _unlink(self._tmp)
            raise
        self._finished = True

    def commit(self) -> None:
        """Rename the finished file into place."""
        if self._done:
            return
        self.finish()
        self._done = True
        try:
            assert self._tmp is not None
            os.replace(self._tmp, self.path)
        except OSError as e:
            _unlink(self._tmp)
            raise output_error(e, self.path) from None
        finally:
            if self._log is not None:
                self._log.close()

    def close(self) -> None:
        """Finish the file and move it into place; with no frames written nothing is saved (ValueError)."""
        if self._done:
            return
        self.finish()
        self.commit()

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; the target path is left untouched."""
        if self._done:
            return
        self._done = True
        try:
            if self._proc is not None and self._proc.poll() is None:
                try:
                    self._proc.stdin.close()
                except OSError:
                    pass
                self._proc.kill()
                self._proc.wait()
        except Exception:
            pass
        finally:
            _unlink(self._tmp)
            if self._log is not None:
                self._log.close()

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
