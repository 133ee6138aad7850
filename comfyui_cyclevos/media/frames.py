"""Lazy frame sources: a video file or a folder of images, streamed one frame at a time (a long video never
sits in memory). Decoding uses the ffmpeg binary shipped with imageio-ffmpeg."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError
from ..runtime.device import available_memory

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
)


def _natural_key(name: str) -> tuple[Any, ...]:
    """Sort 'f2' before 'f10' (zero-padded names sort the same as plain sorting)."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts) + (name,)


def fit_size(hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(H, W) scaled so the longer side is at most max_side, keeping the aspect ratio."""
    h, w = hw
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _resize(frame: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if frame.shape[:2] == hw:
        return frame
    return np.array(Image.fromarray(frame).resize((hw[1], hw[0]), Image.Resampling.LANCZOS))


def _last_line(err: BaseException) -> str:
    """ffmpeg errors carry the whole banner; its last line is the reason."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("===")]
    return (lines[-1] if lines else type(err).__name__)[:200]


class FrameSource:
    """Frames of a video file or a folder of images, decoded lazily one at a time.

    Iterating yields ``(stem, frame)`` with frame an (H, W, 3) uint8 RGB array. ``size`` is (H, W) of
    the frames as yielded (after ``max_side``), ``fps`` the video's rate (None for a folder) and
    ``len()`` the exact number of frames the iteration yields (after skip_first/every_nth/max_frames).
    """

    path: Path
    fps: float | None
    size: tuple[int, int]

    def __init__(self, path: Path, max_frames: int | None, skip_first: int, every_nth: int, max_side: int | None):
        for name, value, low in (
            ("max_frames", max_frames or 0, 0),
            ("skip_first", skip_first, 0),
            ("every_nth", every_nth, 1),
            ("max_side", max_side or 0, 0),
        ):
            if int(value) != value or value < low:
                raise InputError(f"{name}={value!r} is invalid; give a whole number >= {low}")
        self.path = path
        self.max_frames = int(max_frames) if max_frames else None  # 0 = no limit (ComfyUI's convention)
        self.skip_first = int(skip_first)
        self.every_nth = int(every_nth)
        self.max_side = int(max_side) if max_side else None

    def _selection(self, total: int) -> range:
        """Indices into the full sequence that the options keep."""
        r = range(self.skip_first, total, self.every_nth)
        return r[: self.max_frames] if self.max_frames else r

    def _no_frames(self, total: int) -> InputError:
        return InputError(
            f"{self.path} has {total} frames but skip_first={self.skip_first} leaves none; "
            f"lower skip_first below {total}"
        )

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, size={self.size}, fps={self.fps})"

    def read_all(self, on_frame: Callable[[int], None] | None = None) -> np.ndarray:
        """Every frame at once as a (T, H, W, 3) float32 array in 0..1 (a ComfyUI IMAGE batch: 12 bytes a
        pixel), refused up front when it would take more than 80 % of the free memory. ``on_frame(done)``
        runs after each frame and may raise to stop."""
        n = len(self)
        H, W = self.size
        need = n * H * W * 3 * 4
        free = available_memory()
        if free is not None and need > 0.8 * free:
            raise InputError(
                f"{self.path.name}: {n} frames at {W}x{H} need {need / 1e9:.1f} GB as float frames but only "
                f"{free / 1e9:.1f} GB of memory is free; lower max_frames, raise every_nth or set max_side"
            )
        out = np.empty((n, H, W, 3), np.float32)
        extra = []
        kept = 0
        for kept, (_, frame) in enumerate(self, start=1):
            if kept <= n:
                np.multiply(frame, 1.0 / 255.0, out=out[kept - 1], casting="unsafe")
            else:  # the stream held more frames than its header counted
                extra.append(frame[None].astype(np.float32) / 255.0)
            if on_frame is not None:
                on_frame(kept)
        if kept < n:
            out = out[:kept].copy()
        return np.concatenate([out] + extra) if extra else out


def rgb8(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any image: 16-bit (and 32-bit integer) grey scaled from 0..65535 to 0..255, not
    clipped at 255 as PIL's convert does (which turns them white); 48-bit RGB PNGs PIL already reduces to
    their high bytes."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        top = 1.0 if np.nanmax(a, initial=0) <= 1.0 else 255.0
        grey = (np.clip(np.nan_to_num(a) / top, 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(im.convert("RGB"))


class FolderFrames(FrameSource):
    """Image files of a folder in natural name order; stems are the file stems."""

    def __init__(self, path: Path, **options: Any):
        super().__init__(path, **options)
        files = [
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        ]
        if not files:
            raise InputError(
                f"folder {path} holds no image frames (.jpg/.png/.webp/.bmp/.tif); "
                "point to the folder of frames or to a video file"
            )
        files.sort(key=lambda p: _natural_key(p.name))
        seen: dict[str, Path] = {}
        for p in files:
            if p.stem in seen:
                raise InputError(
                    f"frames {seen[p.stem].name} and {p.name} in {path} share the name {p.stem!r}; "
                    "keep only one of them"
                )
            seen[p.stem] = p
        self.total = len(files)
        self.files = [files[i] for i in self._selection(len(files))]
        if not self.files:
            raise self._no_frames(len(files))
        raw = self._check_sizes()
        self.raw_size = raw
        self.size = fit_size(raw, self.max_side)
        self.fps = None

    def _check_sizes(self) -> tuple[int, int]:
        """Read every header (cheap) so a stray frame of another size fails now, not mid-run."""
        first: tuple[int, int] | None = None
        for p in self.files:
            try:
                with Image.open(p) as im:
                    w, h = im.size
                    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation turns it by 90°
                        w, h = h, w
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise InputError(f"cannot read frame {p} ({e}); remove or replace that file") from None
            if first is None:
                first = (h, w)
            elif (h, w) != first:
                raise InputError(
                    f"frame {p.name} is {w}x{h} but {self.files[0].name} is {first[1]}x{first[0]} "
                    f"(width x height); all frames in {self.path} must have the same size"
                )
        assert first is not None
        return first

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for p in self.files:
            try:
                with Image.open(p) as im:
                    frame = rgb8(ImageOps.exif_transpose(im))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise InputError(f"cannot read frame {p} ({e}); remove or replace that file") from None
            if frame.shape[:2] != self.raw_size:
                raise InputError(f"frame {p.name} changed size while reading; all frames must have the same size")
            yield p.stem, _resize(frame, self.size)


class VideoFrames(FrameSource):
    """A video decoded by ffmpeg; stems are the 5-digit index of the frame in the whole video."""

    def __init__(self, path: Path, **options: Any):
        super().__init__(path, **options)
        import imageio_ffmpeg

        gen = imageio_ffmpeg.read_frames(str(path), output_params=["-map", "0:v:0"])
        try:
            meta = next(gen)
            first = next(gen, None)  # decoding one frame proves the stream is readable
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise InputError(
                f"cannot read video {path}: {_last_line(e)}; give a playable video file "
                "(mp4/mov/webm/mkv/avi/gif) or a folder of frames"
            ) from None
        finally:
            gen.close()
        if first is None:
            raise InputError(f"video {path} has no frames; give a video with at least one frame")
        w, h = meta["size"]
        self.raw_size = (int(h), int(w))
        self.size = fit_size(self.raw_size, self.max_side)
        self.fps = float(meta["fps"]) if meta.get("fps") else None
        self.duration = float(meta["duration"]) if meta.get("duration") else None
        self.total: int | None = None  # counted on first len(), or learnt from a full pass

    def _count(self) -> int:
        """Exact frame count: ffmpeg reads the stream once (header estimates are often off by a few). A
        stream that ends early (ffmpeg's "partial file", or far less time than the container's duration)
        is an error: a cut download must not give a complete-looking result."""
        if self.total is None:
            import subprocess

            import imageio_ffmpeg

            cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(self.path)]
            cmd += ["-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
            try:
                r = subprocess.run(cmd, capture_output=True, timeout=3600)
            except (OSError, subprocess.SubprocessError) as e:
                raise InputError(f"cannot count the frames of {self.path}: {e}") from None
            text = r.stderr.decode("utf-8", "replace").replace("\r", "\n")
            counts = re.findall(r"frame=\s*(\d+)", text)
            if r.returncode != 0 or not counts:
                raise InputError(
                    f"cannot count the frames of {self.path}: {_last_line(RuntimeError(text))}; "
                    "re-encode the video (e.g. ffmpeg -i in.mov out.mp4)"
                )
            n = int(counts[-1])
            times = re.findall(r"time=\s*(\d+):(\d+):([\d.]+)", text)
            secs = (lambda h, m, s: int(h) * 3600 + int(m) * 60 + float(s))(*times[-1]) if times else None
            if "partial file" in text:
                raise InputError(
                    f"video {self.path} is truncated (ffmpeg: partial file; {n} frames readable): "
                    "give the complete file or re-encode what is left"
                )
            step = 1 / self.fps if self.fps else 0.1
            if self.duration and secs is not None and secs + 2 * step < 0.9 * self.duration:
                raise InputError(
                    f"video {self.path} is truncated or damaged: its video stream ends at {secs:.2f} s "
                    f"({n} frames) but the file says {self.duration:.2f} s; give the complete file or re-encode it"
                )
            self.total = n
        return self.total

    def __len__(self) -> int:
        n = len(self._selection(self._count()))
        if n == 0:
            raise self._no_frames(self._count())
        return n

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        import imageio_ffmpeg

        h, w = self.raw_size
        wanted = self.skip_first, self.every_nth
        yielded, index = 0, -1
        gen = imageio_ffmpeg.read_frames(str(self.path), output_params=["-map", "0:v:0"])
        try:
            next(gen)  # metadata
            for index, raw in enumerate(gen):
                if index < wanted[0] or (index - wanted[0]) % wanted[1]:
                    continue
                frame = np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()
                yield f"{index:05d}", _resize(frame, self.size)
                yielded += 1
                if self.max_frames and yielded >= self.max_frames:
                    return
            self.total = index + 1  # a full pass gives the true count
        except (OSError, RuntimeError) as e:
            raise InputError(
                f"video {self.path} could not be decoded after frame {index}: {_last_line(e)}; "
                "re-encode it (e.g. ffmpeg -i in.mp4 out.mp4)"
            ) from None
        finally:
            gen.close()
        if yielded == 0:
            raise self._no_frames(index + 1)


def open_frames(
    path: str | os.PathLike[str],
    max_frames: int | None = None,
    skip_first: int = 0,
    every_nth: int = 1,
    max_side: int | None = None,
) -> FrameSource:
    """Open a video file or a folder of image frames for lazy reading.

    Keeps frames ``skip_first, skip_first + every_nth, ...``, at most ``max_frames`` of them (None or 0:
    all), downscaled so the longer side is at most ``max_side`` (None or 0: full size). Raises InputError
    for a missing path, an unreadable video, no frames, or folder frames of different sizes.
    """
    p = Path(path).expanduser()
    options = dict(max_frames=max_frames, skip_first=skip_first, every_nth=every_nth, max_side=max_side)
    if p.is_dir():
        return FolderFrames(p, **options)
    if p.is_file():
        return VideoFrames(p, **options)
    raise InputError(f"{p} does not exist; give the path of a video file or of a folder of frames")


def to_uint8(frame: Any) -> np.ndarray:
    """A frame as (H, W, 3) uint8: a uint8 array as it is, floats in 0..1 (an array or a CPU tensor) rounded."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return frame
    a = np.asarray(frame.detach() if hasattr(frame, "detach") else frame, dtype=np.float32)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
