"""What every cyclevos node shares: ComfyUI's modules when present (with fallbacks, so the nodes import and
run without ComfyUI), tensor adapters, the custom types passed between nodes, and widget specs.

Custom types:
  CYCLEVOS_MODEL    a loaded network with its device and precision (``CycleVOSModel``)
  CYCLEVOS_OBJECTS  the objects to follow: (H, W) uint8 maps of object ids on one or more keyframes (``Objects``)
  CYCLEVOS_MASKS    per-object result: (B, H, W) uint8 ids for every frame, the object ids, the cycle scores (``ObjectMasks``)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..comfyui_cyclevos.errors import InputError
from ..comfyui_cyclevos.media.frames import VIDEO_EXTENSIONS  # noqa: F401  (the nodes' import point)
from ..comfyui_cyclevos.runtime.precision import Precision

log = logging.getLogger("cyclevos")

CATEGORY = "cyclevos"
MODEL_FOLDER = "cyclevos"  # ComfyUI's models/cyclevos/
PACK_ROOT = Path(__file__).resolve().parent.parent
CORE_ROOT = PACK_ROOT / "comfyui_cyclevos"
CHECKPOINT_EXTENSIONS = frozenset({".pt", ".pth"})
DEFAULT_FPS = 24.0


# ----------------------------------------------------------------------------- ComfyUI, when present


def _folder_paths():
    try:
        import folder_paths  # ComfyUI's

        return folder_paths
    except ImportError:
        return None


class _Progress:
    """ComfyUI's progress bar and cancel check; both do nothing outside ComfyUI."""

    def __init__(self, total: int):
        self.total = max(1, int(total))
        self.bar = None
        self._interrupted = None
        try:
            from comfy.utils import ProgressBar

            self.bar = ProgressBar(self.total)
        except ImportError:
            pass
        try:
            from comfy.model_management import throw_exception_if_processing_interrupted

            self._interrupted = throw_exception_if_processing_interrupted
        except ImportError:
            pass

    def check(self) -> None:
        """Raises ComfyUI's InterruptProcessingException when the user cancelled the run."""
        if self._interrupted is not None:
            self._interrupted()

    def update(self, done: int, picture=None) -> None:
        """``picture``: a PIL image the progress bar shows (ComfyUI's ("JPEG", image, max size) preview)."""
        if self.bar is not None:
            self.bar.update_absolute(
                min(int(done), self.total), self.total, None if picture is None else ("JPEG", picture, 512)
            )


def _comfy_device() -> torch.device | None:
    try:
        import comfy.model_management as mm

        return torch.device(mm.get_torch_device())
    except Exception:  # not in ComfyUI, or ComfyUI could not tell
        return None


def _input_dir() -> Path:
    fp = _folder_paths()
    return Path(fp.get_input_directory()) if fp is not None else Path.cwd()


def _output_dir() -> Path:
    fp = _folder_paths()
    return Path(fp.get_output_directory()) if fp is not None else Path.cwd() / "output"


def _show_preview(preview, fps: float) -> dict:
    """Inside ComfyUI: writes ``preview`` (an ``OverlayPreview``) to its temp folder as an animated WEBP and
    returns the node's ``ui`` entry that shows it."""
    fp = _folder_paths()
    first = next(iter(preview.thumbnails.values()))
    folder, name, counter, subfolder, _ = fp.get_save_image_path(
        "cyclevos_preview", fp.get_temp_directory(), *first.size
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    filename = f"{name}_{counter:05}_.webp"
    preview.save_webp(Path(folder) / filename, fps)
    return {"images": [{"filename": filename, "subfolder": subfolder, "type": "temp"}], "animated": (True,)}


# ----------------------------------------------------------------------------- tensors


def _frames(images: torch.Tensor, name: str = "frames") -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, H, W, 3) float on the CPU (an alpha channel is dropped)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be an IMAGE batch (B, H, W, 3), got {shape}")
    if images.shape[0] == 0:
        raise InputError(f"{name} is an empty batch: load at least one frame")
    return images[..., :3].float().cpu()


def _frame_mask(mask: torch.Tensor, index: int, frames: int, size: tuple[int, int], name: str) -> torch.Tensor:
    """One frame's (H, W) float mask from a MASK input: a single mask, or a batch with one mask per frame
    (frame ``index``'s is taken), resized to the frames' size when its aspect ratio fits."""
    m = _mask_batch(mask, name)
    if m.shape[0] not in (1, frames):
        raise InputError(
            f"{name} is a batch of {m.shape[0]} masks for {frames} frames: give one mask, or one mask per frame"
        )
    m = m[index] if m.shape[0] == frames and frames > 1 else m[0]
    if tuple(m.shape) != size:
        _fit_to_frames(tuple(m.shape), size, f"the {name.replace('_', ' ')}")
        m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return m


def _video_frames(video):
    """ComfyUI's VIDEO (``comfy_api.input.VideoInput``) as frames for the library: a file-backed video is
    streamed from its source (``get_stream_source``: a path, or bytes written to a temporary file), so
    the video is never decoded whole into a float IMAGE batch; a video built from components (CreateVideo)
    already holds its IMAGE batch. Returns (frames, temporary file or None)."""
    import io
    import tempfile

    from ..comfyui_cyclevos.media.frames import open_frames

    trim = getattr(video, "get_active_trim_window", None)
    trimmed = trim is not None and tuple(trim()) not in ((0, 0), (0.0, 0.0))
    if "FromFile" in type(video).__name__ and not trimmed and hasattr(video, "get_stream_source"):
        src = video.get_stream_source()
        if isinstance(src, (str, os.PathLike)):
            return open_frames(src), None
        if isinstance(src, io.BytesIO):
            with tempfile.NamedTemporaryFile(suffix=".mp4", delete=False) as f:
                f.write(src.getbuffer())
            return open_frames(f.name), Path(f.name)
    if hasattr(video, "get_components"):
        return _frames(video.get_components().images, "video"), None
    raise InputError(
        f"the video input is a {type(video).__name__}, not ComfyUI's VIDEO: connect LoadVideo or CreateVideo"
    )


def _mask_batch(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """MASK (B, H, W) or (H, W) -> (B, H, W) float on the CPU."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"{name} must be a MASK (B, H, W), got {shape}")
    m = mask[None] if mask.ndim == 2 else mask
    if m.shape[0] == 0 or m.shape[-1] == 0 or m.shape[-2] == 0:
        raise InputError(f"{name} is an empty MASK batch {tuple(m.shape)}: connect at least one mask")
    return m.float().cpu()


def _resize_nearest(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) integer maps -> (..., H, W) by nearest neighbour."""
    lead = ids.shape[:-2]
    x = ids.reshape(-1, 1, *ids.shape[-2:]).float()
    return F.interpolate(x, size=size, mode="nearest").to(ids.dtype).reshape(*lead, *size)


def _fit_to_frames(mask_hw: tuple[int, int], frame_hw: tuple[int, int], name: str) -> None:
    """A mask drawn at another resolution of the same picture is resized; another shape is an error."""
    (h, w), (H, W) = mask_hw, frame_hw
    if abs(h / w - H / W) > 0.01 * (H / W):
        raise InputError(
            f"{name} is {w}x{h} but the frames are {W}x{H} (width x height), another shape: "
            "draw the mask on a frame of this video"
        )


# ----------------------------------------------------------------------------- custom types


@dataclass(eq=False)
class CycleVOSModel:
    """CYCLEVOS_MODEL: a network ready to run, shared by every node that receives it."""

    net: torch.nn.Module
    device: torch.device
    precision: Precision  # resolved for the device
    path: str
    gc_rate: float  # the checkpoint's measured correction rate (alpha), else the paper's 150
    patcher: object = None  # comfy.model_patcher.ModelPatcher inside ComfyUI: its model management moves the net

    def ready(self) -> torch.nn.Module:
        """The network on ``device``. Inside ComfyUI it is loaded through ``load_models_gpu``, so that the UI's
        unload, ``POST /free`` and other models' demands offload it, and this brings it back."""
        if self.patcher is not None:
            import comfy.model_management as mm

            mm.load_models_gpu([self.patcher], force_full_load=True)
            with torch.inference_mode(False):  # moved inside ComfyUI's inference mode: make them ordinary again,
                for t in (*self.net.parameters(), *self.net.buffers()):  # correction and cycle-ERF differentiate
                    if t.is_inference():
                        t.data = t.data.clone()
        return self.net

    def __repr__(self) -> str:
        return f"CycleVOSModel({Path(self.path).name}, {self.device}, {self.precision.name})"


@dataclass(eq=False)
class Objects:
    """CYCLEVOS_OBJECTS: object ids drawn on one or more frames (keyframes) of the video."""

    keyframes: dict[int, np.ndarray]  # frame index -> (H, W) uint8 ids, 0 = background

    @property
    def frame_index(self) -> int:
        """The earliest keyframe: propagation runs forward and backward from it."""
        return min(self.keyframes)

    @property
    def ids(self) -> np.ndarray:
        return self.keyframes[self.frame_index]

    @property
    def object_ids(self) -> list[int]:
        return sorted({int(i) for ids in self.keyframes.values() for i in np.unique(ids) if i != 0})

    def __repr__(self) -> str:
        return f"Objects({self.object_ids} on frames {sorted(self.keyframes)}, {self.ids.shape[1]}x{self.ids.shape[0]})"


@dataclass(eq=False)
class ObjectMasks:
    """CYCLEVOS_MASKS: every frame's object ids, one byte a pixel (a quarter of a float MASK)."""

    ids: torch.Tensor  # (B, H, W) uint8
    object_ids: list[int]
    scores: dict[int, dict[int, float]] = field(default_factory=dict)  # cycle confidence: frame -> {object id: score}

    def __repr__(self) -> str:
        B, H, W = self.ids.shape
        return f"ObjectMasks({B} frames {W}x{H}, objects {self.object_ids})"


# ----------------------------------------------------------------------------- widgets

_MODEL_IN = ("CYCLEVOS_MODEL", {"tooltip": "The network, from CycleVOS Load Model."})
_FRAMES_IN = ("IMAGE", {"tooltip": "The video's frames as an IMAGE batch (B, H, W, 3), e.g. from CycleVOS Load Video."})
_SIZE_IN = (
    "INT",
    {
        "default": 240,
        "min": 0,
        "max": 4096,
        "step": 8,
        "tooltip": "Processing short side in pixels (240 is the paper's; 0 = the frames' own size). "
        "Masks are returned at the frames' size. Larger is slower and needs more memory.",
    },
)


def _int(default, lo, hi, tip, step=1):
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})
