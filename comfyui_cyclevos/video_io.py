"""Video and mask input/output: lazy frame sources, first-frame masks, palette PNGs and mp4 writers.

Frames are streamed one at a time (a long video never sits in memory); every writer goes through a
temporary file renamed into place only when complete, so an interrupted run never leaves a file that
looks finished. Decoding and encoding use the ffmpeg binary shipped with imageio-ffmpeg.
"""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_OUT_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv"})  # containers that take h264
DEFAULT_FPS = 24.0  # for writers fed from a folder of frames, which has no frame rate


# ----------------------------------------------------------------------------- palette


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC / DAVIS colour map: the bits of the index spread over R, G, B from the top bit down."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal.setflags(write=False)
    return pal


DAVIS_PALETTE: np.ndarray = _voc_palette()
"""(256, 3) uint8, read-only: id 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 4 (0,0,128), ..."""


def _palette_codes() -> dict[int, int]:
    """Packed 0xRRGGBB colour -> palette index, for indices 1..255 (0 is black = background)."""
    p = DAVIS_PALETTE.astype(np.uint32)
    codes = (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]
    return {int(c): i for i, c in enumerate(codes) if i > 0}


# ----------------------------------------------------------------------------- frame sources


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


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (None when the system cannot tell)."""
    try:
        import psutil  # optional: ComfyUI has it

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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
        for name, value, low in (("max_frames", max_frames or 0, 0), ("skip_first", skip_first, 0),
                                 ("every_nth", every_nth, 1), ("max_side", max_side or 0, 0)):
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
        return InputError(f"{self.path} has {total} frames but skip_first={self.skip_first} leaves none; "
                          f"lower skip_first below {total}")

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
            raise InputError(f"{self.path.name}: {n} frames at {W}x{H} need {need / 1e9:.1f} GB as float frames but only "
                             f"{free / 1e9:.1f} GB of memory is free; lower max_frames, raise every_nth or set max_side")
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


class FolderFrames(FrameSource):
    """Image files of a folder in natural name order; stems are the file stems."""

    def __init__(self, path: Path, **options: Any):
        super().__init__(path, **options)
        files = [p for p in path.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
        if not files:
            raise InputError(f"folder {path} holds no image frames (.jpg/.png/.webp/.bmp/.tif); "
                             "point to the folder of frames or to a video file")
        files.sort(key=lambda p: _natural_key(p.name))
        seen: dict[str, Path] = {}
        for p in files:
            if p.stem in seen:
                raise InputError(f"frames {seen[p.stem].name} and {p.name} in {path} share the name {p.stem!r}; "
                                 "keep only one of them")
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
                raise InputError(f"frame {p.name} is {w}x{h} but {self.files[0].name} is {first[1]}x{first[0]} "
                                 f"(width x height); all frames in {self.path} must have the same size")
        assert first is not None
        return first

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for p in self.files:
            try:
                with Image.open(p) as im:
                    frame = np.array(ImageOps.exif_transpose(im).convert("RGB"))
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
            raise InputError(f"cannot read video {path}: {_last_line(e)}; give a playable video file "
                             "(mp4/mov/webm/mkv/avi/gif) or a folder of frames") from None
        finally:
            gen.close()
        if first is None:
            raise InputError(f"video {path} has no frames; give a video with at least one frame")
        w, h = meta["size"]
        self.raw_size = (int(h), int(w))
        self.size = fit_size(self.raw_size, self.max_side)
        self.fps = float(meta["fps"]) if meta.get("fps") else None
        self.total: int | None = None  # counted on first len(), or learnt from a full pass

    def _count(self) -> int:
        """Exact frame count: ffmpeg decodes the stream once (header estimates are often off by a few)."""
        if self.total is None:
            import imageio_ffmpeg

            try:
                n, _secs = imageio_ffmpeg.count_frames_and_secs(str(self.path))
            except (OSError, RuntimeError) as e:
                raise InputError(f"cannot count the frames of {self.path}: {_last_line(e)}; "
                                 "re-encode the video (e.g. ffmpeg -i in.mov out.mp4)") from None
            self.total = int(n)
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
            raise InputError(f"video {self.path} could not be decoded after frame {index}: {_last_line(e)}; "
                             "re-encode it (e.g. ffmpeg -i in.mp4 out.mp4)") from None
        finally:
            gen.close()
        if yielded == 0:
            raise self._no_frames(index + 1)


def open_frames(path: str | os.PathLike[str], max_frames: int | None = None, skip_first: int = 0,
                every_nth: int = 1, max_side: int | None = None) -> FrameSource:
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


# ----------------------------------------------------------------------------- masks


def to_uint8(frame: Any) -> np.ndarray:
    """A frame as (H, W, 3) uint8: a uint8 array as it is, floats in 0..1 (an array or a CPU tensor) rounded."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return frame
    a = np.asarray(frame.detach() if hasattr(frame, "detach") else frame, dtype=np.float32)
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def mask_from_array(ids: Any, name: str = "mask") -> np.ndarray:
    """(H, W) uint8 ids from any 2-D array of whole numbers 0..255 (bool, int or integral float)."""
    a = np.asarray(ids)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array of object ids, got shape {a.shape}; give one id map per frame")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise InputError(f"{name} holds non-integer values; object ids must be whole numbers 0..255")
    if a.dtype.kind not in "iuf":
        raise InputError(f"{name} has dtype {a.dtype}; object ids must be whole numbers 0..255")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise InputError(f"{name} holds ids from {a.min()} to {a.max()}; ids must be 0 (background) to 255, "
                         "at most 255 objects")
    return a.astype(np.uint8)


def _grey_ids(a: np.ndarray) -> np.ndarray:
    """Grey values up to 127 are ids; anything reaching 128 or more is a binary (or soft/JPEG) mask cut at half its max."""
    if a.size == 0:
        return a.astype(np.uint8)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError("mask holds NaN or infinite values; save it as an 8-bit PNG")
    top = a.max()
    if a.min() < 0:
        raise InputError("mask holds negative values; object ids must be 0..255")
    if top >= 128 or (a.dtype.kind == "f" and (a != np.round(a)).any()):
        return (a > top / 2).astype(np.uint8)
    return a.astype(np.uint8)


def _colour_ids(rgb: np.ndarray) -> np.ndarray:
    """Solid colours -> ids: DAVIS palette indices if every colour is a palette colour, else order of appearance."""
    h, w, _ = rgb.shape
    c = rgb.astype(np.uint32)
    code = ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).ravel()
    uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    fg = uniq != 0
    n = int(fg.sum())
    if n > 255:
        raise InputError(f"colour mask has {n} different colours (at most 255 objects); save it as PNG with solid "
                         "colours, no anti-aliasing or JPEG compression")
    lut = np.zeros(len(uniq), np.uint8)
    pal = _palette_codes()
    if all(int(u) in pal for u in uniq[fg]):
        lut[fg] = [pal[int(u)] for u in uniq[fg]]
    else:
        order = np.flatnonzero(fg)[np.argsort(first[fg], kind="stable")]
        lut[order] = np.arange(1, n + 1)
    return lut[inverse.reshape(-1)].reshape(h, w)


def _ids_from_image(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        return np.array(im, np.uint8)  # palette indices are the ids (DAVIS annotations)
    if mode == "PA":
        return np.array(im.convert("PA"))[..., 0].astype(np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La"):
        alpha = np.array(im.getchannel("A"))
        if alpha.min() < 255:  # a cut-out: the alpha channel is the mask, whatever the colours
            return (alpha > 127).astype(np.uint8)
        im = im.convert("RGB" if mode.startswith("RGB") else "L")
        mode = im.mode
    if mode == "1":
        return np.array(im, np.uint8)
    if mode in ("L", "F") or mode.startswith("I"):
        return _grey_ids(np.array(im))
    rgb = np.array(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _grey_ids(rgb[..., 0])  # a grey mask saved as RGB
    return _colour_ids(rgb)


def ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids from an (H, W, 3) uint8 picture of a mask, by the rules of ``read_mask`` for RGB
    files: grey ids or a binary grey mask, else solid colours (DAVIS palette colours map to their index)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise InputError(f"a colour mask must be (H, W, 3) uint8, got {a.shape} {a.dtype}")
    return _ids_from_image(Image.fromarray(a, "RGB"))


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) uint8 object ids from a mask image; ids are kept as given (need not be contiguous).

    Accepted: a palette PNG (indices are ids, as in DAVIS); greyscale ids 0..127; a binary or soft
    greyscale mask (any value >= 128 present: thresholded at half its maximum -> 0/1, so 0/255 and
    JPEG-blurred masks give one object); RGBA whose alpha is not fully opaque (alpha > 127 -> 1, one
    object); RGB of solid colours (black is background; DAVIS palette colours map to their index,
    other colours get 1, 2, ... in order of first appearance, scanning rows top to bottom).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"mask {p} does not exist; give the path of a PNG mask of the first frame")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # same orientation as the frames
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read mask {p} ({e}); save the mask as a PNG image") from None
    return _ids_from_image(im)


def check_mask(ids: np.ndarray, frame_size: tuple[int, int], name: str = "mask") -> list[int]:
    """Check a mask of object ids against its frame's size (H, W); return the sorted object ids present."""
    a = np.asarray(ids)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array of object ids, got shape {a.shape}")
    h, w = a.shape
    fh, fw = int(frame_size[0]), int(frame_size[1])
    if (h, w) != (fh, fw):
        raise InputError(f"{name} is {w}x{h} but the frame is {fw}x{fh} (width x height); resize the mask "
                         f"to {fw}x{fh} or give the frame it was drawn on")
    objects = np.unique(a)
    objects = objects[objects != 0]
    if objects.size == 0:
        raise InputError(f"{name} has no object pixels (all background); draw at least one object")
    if objects.size > 255:
        raise InputError(f"{name} has {objects.size} objects; at most 255 objects (ids 1..255) are supported")
    if objects.min() < 0 or objects.max() > 255:
        raise InputError(f"{name} holds ids from {objects.min()} to {objects.max()}; ids must be 1..255")
    return [int(x) for x in objects]


# ----------------------------------------------------------------------------- writers


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


def _boundary(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """Object pixels within ``width`` of a pixel with another id (4-neighbourhood)."""
    inner = np.ones(ids.shape, bool)
    dv = ids[1:, :] == ids[:-1, :]
    dh = ids[:, 1:] == ids[:, :-1]
    inner[1:] &= dv
    inner[:-1] &= dv
    inner[:, 1:] &= dh
    inner[:, :-1] &= dh
    for _ in range(width - 1):  # erode the interior further for a thicker line
        e = inner.copy()
        e[1:] &= inner[:-1]
        e[:-1] &= inner[1:]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        inner = e
    return ~inner & (ids > 0)


def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5, boundary: int = 1) -> np.ndarray:
    """(H, W, 3) uint8: objects tinted with their palette colour, outlined ``boundary`` px in a darker shade."""
    f = np.asarray(frame)
    m = mask_from_array(ids)
    if f.ndim != 3 or f.shape[2] != 3 or f.shape[:2] != m.shape:
        raise ValueError(f"frame {f.shape} and mask {m.shape} do not match; expected (H, W, 3) and (H, W)")
    out = f.astype(np.uint8, copy=True)
    fg = m > 0
    if fg.any():
        colour = DAVIS_PALETTE[m[fg]].astype(np.float32)
        out[fg] = np.clip(f[fg] * (1.0 - alpha) + colour * alpha + 0.5, 0, 255).astype(np.uint8)
        if boundary > 0:
            edge = _boundary(m, boundary)
            out[edge] = DAVIS_PALETTE[m[edge]] // 2
    return out


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
            str(self._tmp), (w + w % 2, h + h % 2), fps=self.fps, quality=self.quality,
            pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
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

    def __init__(self, path: str | os.PathLike[str], fps: float | None, size: tuple[int, int],
                 alpha: float = 0.5, quality: float = 8):
        super().__init__(path, fps, size, quality)
        self.alpha = alpha

    def write(self, frame: np.ndarray, ids: np.ndarray | None = None) -> None:
        self._write_rgb(frame if ids is None else overlay(frame, ids, self.alpha))

    def __enter__(self) -> OverlayVideoWriter:
        return self
