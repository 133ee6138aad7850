"""The cyclevos nodes for ComfyUI (classic node API), category ``cyclevos``.

Thin adapters: ComfyUI's types in, a call into the library (``comfyui_cyclevos``), ComfyUI's types out.
IMAGE is (B, H, W, 3) float32 in 0..1 on the CPU and MASK (B, H, W) float32. ComfyUI's own modules
(``folder_paths``, ``comfy.utils``, ``comfy.model_management``) are imported inside functions with
fallbacks, so every class imports and runs without ComfyUI.

Custom types passed between these nodes:
  CYCLEVOS_MODEL    a loaded network with its device and precision (``CycleVOSModel``)
  CYCLEVOS_OBJECTS  the objects to follow: an (H, W) uint8 map of object ids on one frame (``Objects``)
  CYCLEVOS_MASKS    per-object result: (B, H, W) uint8 ids for every frame + the object ids (``ObjectMasks``)
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..comfyui_cyclevos.errors import InputError
from ..comfyui_cyclevos.precision import Precision

log = logging.getLogger("cyclevos")

CATEGORY = "cyclevos"
MODEL_FOLDER = "cyclevos"  # ComfyUI's models/cyclevos/
PACK_ROOT = Path(__file__).resolve().parent.parent
CORE_ROOT = PACK_ROOT / "comfyui_cyclevos"
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".gif", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
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

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update_absolute(min(int(done), self.total), self.total)


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


# ----------------------------------------------------------------------------- tensors


def _frames(images: torch.Tensor, name: str = "frames") -> torch.Tensor:
    """IMAGE (B, H, W, C) -> (B, H, W, 3) float on the CPU (an alpha channel is dropped)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be an IMAGE batch (B, H, W, 3), got {shape}")
    if images.shape[0] == 0:
        raise InputError(f"{name} is an empty batch: load at least one frame")
    return images[..., :3].float().cpu()


def _mask_batch(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """MASK (B, H, W) or (H, W) -> (B, H, W) float on the CPU."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"{name} must be a MASK (B, H, W), got {shape}")
    m = mask[None] if mask.ndim == 2 else mask
    return m.float().cpu()


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    return (frame.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _resize_nearest(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) integer maps -> (..., H, W) by nearest neighbour."""
    lead = ids.shape[:-2]
    x = ids.reshape(-1, 1, *ids.shape[-2:]).float()
    return F.interpolate(x, size=size, mode="nearest").to(ids.dtype).reshape(*lead, *size)


def _fit_to_frames(mask_hw: tuple[int, int], frame_hw: tuple[int, int], name: str) -> None:
    """A mask drawn at another resolution of the same picture is resized; another shape is an error."""
    (h, w), (H, W) = mask_hw, frame_hw
    if abs(h / w - H / W) > 0.01 * (H / W):
        raise InputError(f"{name} is {w}x{h} but the frames are {W}x{H} (width x height), another shape: "
                         "draw the mask on a frame of this video")


# ----------------------------------------------------------------------------- custom types


@dataclass(eq=False)
class CycleVOSModel:
    """CYCLEVOS_MODEL: a network ready to run, shared by every node that receives it."""

    net: torch.nn.Module
    device: torch.device
    precision: Precision  # resolved for the device
    path: str
    gc_rate: float  # the checkpoint's measured correction rate (alpha), else the paper's 150

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


# ----------------------------------------------------------------------------- the model cache

_MODEL_CACHE: OrderedDict[tuple, CycleVOSModel] = OrderedDict()
_MODEL_CACHE_LOCK = threading.Lock()
MODEL_CACHE_SIZE = 2  # networks kept loaded (the most recently used)


def clear_model_cache() -> None:
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()


def _register_model_folder(fp) -> None:
    """models/cyclevos/ and the pack's weights/ as ComfyUI model folder 'cyclevos' (idempotent)."""
    fp.add_model_folder_path(MODEL_FOLDER, os.path.join(fp.models_dir, MODEL_FOLDER))
    fp.add_model_folder_path(MODEL_FOLDER, str(PACK_ROOT / "weights"))
    exts = fp.folder_names_and_paths[MODEL_FOLDER][1]
    if isinstance(exts, set):
        exts.update(CHECKPOINT_EXTENSIONS)


def _fallback_model_dirs() -> list[Path]:
    return [PACK_ROOT / "weights", CORE_ROOT / "weights"]


def list_checkpoints() -> list[str]:
    from ..comfyui_cyclevos.checkpoint import DEFAULT_WEIGHTS

    fp = _folder_paths()
    if fp is not None:
        _register_model_folder(fp)
        names = [n for n in fp.get_filename_list(MODEL_FOLDER) if os.path.splitext(n)[1].lower() in CHECKPOINT_EXTENSIONS]
    else:
        names = sorted({p.name for d in _fallback_model_dirs() if d.is_dir() for p in d.iterdir()
                        if p.is_file() and p.suffix.lower() in CHECKPOINT_EXTENSIONS})
    names = sorted(set(names))
    if DEFAULT_WEIGHTS in names:  # the shipped checkpoint first: it is the widget's default
        names.remove(DEFAULT_WEIGHTS)
        names.insert(0, DEFAULT_WEIGHTS)
    return names


def resolve_checkpoint(name: str) -> Path:
    fp = _folder_paths()
    if fp is not None:
        _register_model_folder(fp)
        full = fp.get_full_path(MODEL_FOLDER, name)
        if full:
            return Path(full)
    for d in _fallback_model_dirs():
        if (d / name).is_file():
            return d / name
    p = Path(name).expanduser()
    if p.is_absolute() and p.is_file():  # outside ComfyUI (scripts, tests): any path
        return p
    where = "ComfyUI's models/cyclevos/ or the pack's weights/" if fp is not None else "the pack's weights/"
    raise InputError(f"checkpoint {name!r} not found in {where}: put a cyclevos .pt file there "
                     "(or convert STM weights with 'cyclevos convert') and refresh")


def _resolve_device(device: str, precision: str):
    """The device, and the precision resolved for it by the library's policy (``auto``: fp16 on CUDA,
    bf16 on CPUs with native bf16, fp32 elsewhere; one it cannot run is an error)."""
    from ..comfyui_cyclevos.device import pick_device
    from ..comfyui_cyclevos.precision import pick_precision

    if device == "auto":
        dev = _comfy_device()
        dev = dev if dev is not None and dev.type in ("cpu", "cuda") else pick_device("auto")
    else:
        dev = pick_device(device)
    return dev, pick_precision(dev, precision)


def load_model(path: str | os.PathLike, device: str = "auto", precision: str = "auto") -> CycleVOSModel:
    """Load a checkpoint once: later calls with the same file (path, size, mtime), device and precision
    get the same object; a changed file is read again and its stale entries dropped."""
    from ..comfyui_cyclevos.checkpoint import checkpoint_meta, load_checkpoint
    from ..comfyui_cyclevos.config import CorrectionConfig

    path = Path(path).resolve()
    dev, precision = _resolve_device(device, precision)
    try:
        st = path.stat()
    except OSError:
        raise InputError(f"checkpoint {path} not found") from None
    key = (str(path), st.st_mtime_ns, st.st_size, str(dev), precision.name)
    with _MODEL_CACHE_LOCK:
        hit = _MODEL_CACHE.get(key)
        if hit is not None:
            _MODEL_CACHE.move_to_end(key)
            return hit
        for k in [k for k in _MODEL_CACHE if k[0] == key[0]]:  # the file changed: drop what was read before
            del _MODEL_CACHE[k]
        net = load_checkpoint(path, dev)
        for p in net.parameters():
            p.requires_grad_(False)  # correction differentiates w.r.t. the mask only
        gc_rate = float(checkpoint_meta(path).get("gc_rate", CorrectionConfig.alpha))
        model = CycleVOSModel(net, dev, precision, str(path), gc_rate)
        _MODEL_CACHE[key] = model
        while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
            _MODEL_CACHE.popitem(last=False)
        return model


# ----------------------------------------------------------------------------- video files


def list_videos() -> list[str]:
    d = _input_dir()
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
                  and not p.name.startswith("."))


def resolve_video(name: str) -> Path:
    """A name from the input folder (ComfyUI's 'name [input]' / '[output]' / '[temp]' annotations
    allowed); outside ComfyUI a path relative to the working folder, or absolute."""
    fp = _folder_paths()
    if fp is None:
        return Path(name).expanduser().resolve()
    rel, base = fp.annotated_filepath(name)
    base = os.path.abspath(base or fp.get_input_directory())
    full = os.path.abspath(os.path.join(base, rel))
    if os.path.commonpath((base, full)) != base:
        raise InputError(f"video {name!r} is outside ComfyUI's folders: put it in the input folder")
    return Path(full)


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """size + mtime + sha256 of the first and last MiB: cheap even for a large video, and it changes
    when the file is replaced or edited."""
    st = os.stat(path)
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if st.st_size > chunk:
            f.seek(max(chunk, st.st_size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


# ----------------------------------------------------------------------------- widgets

_MODEL_IN = ("CYCLEVOS_MODEL", {"tooltip": "The network, from CycleVOS Load Model."})
_FRAMES_IN = ("IMAGE", {"tooltip": "The video's frames as an IMAGE batch (B, H, W, 3), e.g. from CycleVOS Load Video."})
_SIZE_IN = ("INT", {"default": 240, "min": 0, "max": 4096, "step": 8,
                    "tooltip": "Processing short side in pixels (240 is the paper's; 0 = the frames' own size). "
                               "Masks are returned at the frames' size. Larger is slower and needs more memory."})


def _int(default, lo, hi, tip, step=1):
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


# ----------------------------------------------------------------------------- nodes


class CycleVOSLoadVideo:
    DESCRIPTION = ("Loads a video from ComfyUI's input folder as an IMAGE batch (float32, B x H x W x 3: "
                   "12 bytes a pixel, so a long or large video needs a lot of memory; use the frame cap, skip, "
                   "every-nth and max side options to bound it). Also gives the frame rate and the frame count.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")
    OUTPUT_TOOLTIPS = ("The frames kept, as an IMAGE batch.",
                       "Frames per second of the video divided by every_nth (24 when unknown).",
                       "Number of frames in the batch.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (list_videos(), {"video_upload": True,
                                      "tooltip": "A video file in ComfyUI's input folder (mp4, mov, webm, mkv, avi, gif...); upload one with the button."}),
            "max_frames": _int(0, 0, 1_000_000, "Keep at most this many frames (0 = all)."),
            "skip_first": _int(0, 0, 1_000_000, "Skip this many frames at the start."),
            "every_nth": _int(1, 1, 1000, "Keep every n-th frame (1 = all): fewer frames, less memory and time."),
            "max_side": _int(0, 0, 8192, "Downscale so the longer side is at most this many pixels (0 = keep the size).", 8),
        }}

    @classmethod
    def IS_CHANGED(cls, video, **kwargs):
        try:
            return file_fingerprint(resolve_video(video))
        except (OSError, InputError):
            return f"missing:{video}"

    @classmethod
    def VALIDATE_INPUTS(cls, video):
        try:
            path = resolve_video(video)
        except InputError as e:
            return str(e)
        if not path.is_file():
            return f"video file not found: {video} (looked for {path})"
        return True

    def load(self, video, max_frames=0, skip_first=0, every_nth=1, max_side=0):
        from ..comfyui_cyclevos.video_io import open_frames

        source = open_frames(resolve_video(video), max_frames=max_frames or None, skip_first=skip_first,
                             every_nth=every_nth, max_side=max_side or None)
        progress = _Progress(len(source))

        def on_frame(done: int) -> None:
            progress.check()
            progress.update(done)

        out = torch.from_numpy(source.read_all(on_frame))  # (B, H, W, 3) float32 in 0..1
        fps = float(source.fps or DEFAULT_FPS) / every_nth
        return (out, fps, int(out.shape[0]))


class CycleVOSFirstFrameMask:
    DESCRIPTION = ("The objects to follow, drawn on one frame: either a MASK batch with one object per mask "
                   "(e.g. LoadImage's MASK after painting in the mask editor, or several masks batched), or an "
                   "IMAGE whose colours are object ids (a DAVIS palette PNG, black = background, one object per colour).")
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("CYCLEVOS_OBJECTS", "MASK")
    RETURN_NAMES = ("objects", "mask")
    OUTPUT_TOOLTIPS = ("The object ids on that frame, for CycleVOS Propagate.",
                       "All objects together as one MASK (for a preview).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frame_index": _int(0, 0, 1_000_000, "Index of the frame (in the loaded batch) the objects are drawn on; "
                                                     "propagation runs forward and backward from it."),
                "threshold": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                        "tooltip": "MASK values above this are object pixels."}),
                "invert": ("BOOLEAN", {"default": False,
                                       "tooltip": "Invert the MASK first (LoadImage's mask is 1 - alpha: a cut-out with an "
                                                  "opaque object and a transparent background gives the background)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "One object per mask in the batch (object ids 1, 2, ...). Connect this OR image."}),
                "image": ("IMAGE", {"tooltip": "A picture of the mask whose colours are object ids. Connect this OR mask."}),
            },
        }

    def make(self, frame_index=0, threshold=0.5, invert=False, mask=None, image=None):
        if (mask is None) == (image is None):
            raise InputError("connect either a MASK (one object per mask) or an IMAGE of object colours to "
                             "CycleVOS First Frame Mask" + (", not both" if mask is not None else ""))
        if mask is not None:
            ids = self._from_masks(_mask_batch(mask), threshold, invert)
        else:
            from ..comfyui_cyclevos.video_io import ids_from_rgb

            ids = ids_from_rgb(_to_uint8(_frames(image, "image")[0]))
        if not (ids > 0).any():
            raise InputError("the mask image has no object pixels (all black/background): colour the objects")
        objects = Objects({int(frame_index): ids})
        return (objects, torch.from_numpy(ids > 0).float()[None])

    @staticmethod
    def _from_masks(m: torch.Tensor, threshold: float, invert: bool) -> np.ndarray:
        if m.shape[-2:] == (64, 64) and not bool(m.any()):
            raise InputError("the MASK is LoadImage's empty 64x64 placeholder: the image has no alpha channel, so "
                             "LoadImage gives no mask. Paint the objects in the mask editor (right-click the image > "
                             "Open in MaskEditor), or connect LoadImage's IMAGE output to 'image' to use colours as ids")
        if invert:
            m = 1 - m
        if m.shape[0] > 255:
            raise InputError(f"{m.shape[0]} masks: at most 255 objects")
        value, index = m.max(0)
        ids = torch.where(value > threshold, index + 1, 0).to(torch.uint8).numpy()
        present = set(np.unique(ids).tolist())
        for k in range(m.shape[0]):
            if k + 1 not in present:
                state = "empty" if not bool((m[k] > threshold).any()) else "hidden under the other masks"
                raise InputError(f"mask {k + 1} of {m.shape[0]} is {state}: each mask of the batch must hold one object "
                                 f"(values above threshold {threshold})")
        if len(present - {0}) and (ids > 0).mean() > 0.9:
            log.warning("cyclevos: the objects cover %.0f%% of the frame; is the mask inverted?", 100 * (ids > 0).mean())
        return ids


class CycleVOSKeyframe(CycleVOSFirstFrameMask):
    DESCRIPTION = ("A fix on a later frame: the objects drawn on this frame replace the prediction there (a new id adds an "
                   "object) and go into memory. Chain after CycleVOS First Frame Mask or another Keyframe; the chain goes "
                   "into CycleVOS Propagate. CycleVOS Confidence suggests the frames to fix first.")
    FUNCTION = "add"
    RETURN_TYPES = ("CYCLEVOS_OBJECTS", "MASK")
    OUTPUT_TOOLTIPS = ("The keyframes so far, for CycleVOS Propagate or the next Keyframe.",
                       "This keyframe's objects together as one MASK (for a preview).")

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"] = {"objects": ("CYCLEVOS_OBJECTS", {"tooltip": "The keyframes so far (First Frame Mask or another Keyframe)."}),
                            **spec["required"]}
        spec["required"]["frame_index"] = _int(10, 0, 1_000_000, "Index of the frame (in the loaded batch) this fix is drawn on.")
        return spec

    def add(self, objects, frame_index=10, threshold=0.5, invert=False, mask=None, image=None):
        drawn, preview = self.make(frame_index, threshold, invert, mask, image)
        if int(frame_index) in objects.keyframes:
            raise InputError(f"frame {frame_index} already has a keyframe in this chain: use another frame_index")
        if drawn.ids.shape != objects.ids.shape:
            raise InputError(f"this keyframe's mask is {drawn.ids.shape[1]}x{drawn.ids.shape[0]} but the first one's is "
                             f"{objects.ids.shape[1]}x{objects.ids.shape[0]}: draw every keyframe at one size")
        return (Objects({**objects.keyframes, **drawn.keyframes}), preview)


class CycleVOSLoadModel:
    DESCRIPTION = ("Loads a cyclevos checkpoint from ComfyUI's models/cyclevos/ folder or the pack's weights/ folder. "
                   "It is loaded once and reused by later runs while the file, device and precision stay the same.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("CYCLEVOS_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The network, for the Propagate, Gradient Correct and Cycle-ERF nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "checkpoint": (list_checkpoints(), {"tooltip": "A cyclevos .pt checkpoint (models/cyclevos/ or the pack's weights/)."}),
            "device": (["auto", "cpu", "cuda"], {"default": "auto", "tooltip": "auto: ComfyUI's device if it is a CUDA GPU, else the CPU."}),
            "precision": (["auto", "fp32", "bf16", "fp16"], {"default": "auto", "tooltip": "Autocast dtype. auto: fp16 on a CUDA GPU, bf16 on CPUs that run it natively, fp32 elsewhere."}),
        }}

    def load(self, checkpoint, device="auto", precision="auto"):
        return (load_model(resolve_checkpoint(checkpoint), device, precision),)


def _inference_config(model: CycleVOSModel, size, mem_every, mem_capacity, gradient_correction, gc_every, gc_steps, gc_rate):
    from ..comfyui_cyclevos.config import CorrectionConfig, InferenceConfig, MemoryConfig

    return InferenceConfig(
        size=int(size),
        precision=model.precision.name,
        memory=MemoryConfig(K=int(mem_every), capacity=int(mem_capacity)),
        correction=CorrectionConfig(enabled=bool(gradient_correction), K=int(gc_every), N=int(gc_steps),
                                    alpha=float(gc_rate) if gc_rate > 0 else model.gc_rate),
    )


def propagate_frames(model: CycleVOSModel, frames: torch.Tensor, keyframes: dict[int, np.ndarray], config,
                     progress: _Progress | None = None) -> ObjectMasks:
    """Every frame's ids for a (B, H, W, 3) batch from the ids drawn on the keyframes (the library's
    forward-then-backward propagation), with the cycle scores when ``config.confidence`` is on."""
    from ..comfyui_cyclevos.propagate import InferenceCore, propagate_both_ways

    out = torch.zeros(frames.shape[:3], dtype=torch.uint8)
    scores = {}
    make_engine = lambda: InferenceCore(model.net, config, model.device, model.precision)
    for done, (t, _, labels, frame_scores) in enumerate(propagate_both_ways(make_engine, enumerate(frames), keyframes), 1):
        if progress is not None:
            progress.check()
        out[t] = torch.from_numpy(labels)
        if frame_scores:
            scores[t] = frame_scores
        if progress is not None:
            progress.update(done)
    object_ids = sorted({int(i) for ids in keyframes.values() for i in np.unique(ids) if i != 0})
    return ObjectMasks(out, object_ids, scores)


class CycleVOSPropagate:
    DESCRIPTION = ("Follows the objects through the frames with the cycle-consistent space-time memory network. "
                   "The objects may be drawn on any frame: the run goes forward from that frame to the end, then "
                   "backward from it to the first frame. With gradient correction on, every K-th frame's mask is "
                   "refined against the drawn mask (paper Eq. 5). Time and memory per frame are bounded by the memory "
                   "capacity, not by the video's length.")
    CATEGORY = CATEGORY
    FUNCTION = "propagate"
    RETURN_TYPES = ("MASK", "CYCLEVOS_MASKS")
    RETURN_NAMES = ("mask", "masks")
    OUTPUT_TOOLTIPS = ("All objects together, one MASK per frame (B, H, W) at the frames' size.",
                       "Each frame's object ids, for Select Object, Overlay and Save Masks.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": _MODEL_IN,
            "frames": _FRAMES_IN,
            "objects": ("CYCLEVOS_OBJECTS", {"tooltip": "The objects on one frame, from CycleVOS First Frame Mask."}),
            "mem_every": _int(5, 1, 1000, "Add every K-th frame to the memory (the paper's 5)."),
            "mem_capacity": _int(16, 1, 1000, "Most memory frames besides the drawn one (oldest dropped): bounds time and memory per frame."),
            "size": _SIZE_IN,
            "gradient_correction": ("BOOLEAN", {"default": True, "tooltip": "Refine every K-th frame's mask against the drawn mask (paper Eq. 5); about 2-5x slower on those frames."}),
            "gc_every": _int(5, 1, 1000, "Correct every K-th frame."),
            "gc_steps": _int(10, 1, 200, "N gradient steps per corrected frame."),
            "gc_rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10000.0, "step": 1.0,
                                  "tooltip": "Step size alpha (0 = the checkpoint's measured rate, else 150; the loss is a per-pixel mean, hence large)."}),
        }, "optional": {
            "confidence": ("BOOLEAN", {"default": True, "tooltip": "Score every K-th frame's mask by the cycle check (paper Eq. 2): "
                                       "read it with CycleVOS Confidence to see where tracking failed."}),
        }}

    def propagate(self, model, frames, objects, mem_every=5, mem_capacity=16, size=240, gradient_correction=True,
                  gc_every=5, gc_steps=10, gc_rate=0.0, confidence=None):
        frames = _frames(frames)
        B, H, W, _ = frames.shape
        keyframes = {}
        for t, drawn in sorted(objects.keyframes.items()):
            if not 0 <= t < B:
                raise InputError(f"the objects are drawn on frame {t} but there are {B} frames (0..{B - 1})")
            ids = torch.from_numpy(np.ascontiguousarray(drawn))
            if tuple(ids.shape) != (H, W):
                _fit_to_frames(tuple(ids.shape), (H, W), "the objects' mask")
                ids = _resize_nearest(ids, (H, W))
            keyframes[t] = ids.numpy()
        config = _inference_config(model, size, mem_every, mem_capacity, gradient_correction, gc_every, gc_steps, gc_rate)
        config = replace(config, confidence=replace(config.confidence, enabled=confidence is None or bool(confidence)))  # on unless turned off
        masks = propagate_frames(model, frames, keyframes, config, _Progress(B))
        return ((masks.ids > 0).float(), masks)


class CycleVOSConfidence:
    DESCRIPTION = ("Where did tracking fail? Propagate scores every K-th frame's mask by the paper's cycle check: from that "
                   "frame and its mask alone, the network predicts the drawn mask back (Eq. 2); a low score means the mask "
                   "likely drifted. Gives a plot of the scores over time and the frames to fix first.")
    CATEGORY = CATEGORY
    FUNCTION = "report"
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("plot", "suggested_frames", "scores_csv")
    OUTPUT_TOOLTIPS = ("Each object's score (0 bottom, 1 top) over the frames; suggested frames in grey.",
                       "The frames to correct first (low scores, spread over the video), comma-separated.",
                       "frame,object,score rows.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "masks": ("CYCLEVOS_MASKS", {"tooltip": "From CycleVOS Propagate with confidence on."}),
            "count": _int(3, 1, 100, "How many frames to suggest."),
        }}

    def report(self, masks, count=3):
        from ..comfyui_cyclevos.confidence import plot_scores, suggest_keyframes

        if not masks.scores:
            raise InputError("these masks carry no cycle scores: turn on confidence in CycleVOS Propagate")
        B = masks.ids.shape[0]
        suggested = suggest_keyframes(masks.scores, int(count), B)
        plot = torch.from_numpy(plot_scores(masks.scores, suggested, B)).float()[None] / 255
        rows = ["frame,object,score"] + [f"{t},{o},{v:.4f}" for t in sorted(masks.scores) for o, v in sorted(masks.scores[t].items())]
        return (plot, ", ".join(map(str, suggested)), "\n".join(rows))


class CycleVOSRefineEdges:
    DESCRIPTION = ("Edge controls per object on Propagate's masks: grow or shrink by pixels, fill holes, remove specks "
                   "below an area, and feather the edge of the MASK output (inside the frame; core FeatherMask only "
                   "feathers the image border). Objects never overlap: growing takes background only.")
    CATEGORY = CATEGORY
    FUNCTION = "refine"
    RETURN_TYPES = ("CYCLEVOS_MASKS", "MASK")
    RETURN_NAMES = ("masks", "mask")
    OUTPUT_TOOLTIPS = ("The refined object ids (for Select Object, Overlay, Save Masks).",
                       "All objects together, feathered: (B, H, W) float in 0..1.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "masks": ("CYCLEVOS_MASKS", {"tooltip": "From CycleVOS Propagate."}),
            "grow": _int(0, -256, 256, "Pixels to grow each object by (negative: shrink)."),
            "fill_holes": ("BOOLEAN", {"default": False, "tooltip": "Fill background regions enclosed by an object."}),
            "min_area": _int(0, 0, 1_000_000, "Remove pieces of an object smaller than this many pixels (0: keep all)."),
            "feather": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5,
                                  "tooltip": "Soft edge of the MASK output: Gaussian sigma in pixels (0: hard)."}),
        }}

    def refine(self, masks, grow=0, fill_holes=False, min_area=0, feather=0.0):
        from ..comfyui_cyclevos.mask_edges import EdgeConfig, refine_ids, soft_mask

        cfg = EdgeConfig(int(grow), bool(fill_holes), int(min_area), float(feather))
        B = masks.ids.shape[0]
        progress = _Progress(B)
        ids = masks.ids.clone()
        soft = torch.zeros(ids.shape, dtype=torch.float32)
        for t in range(B):
            progress.check()
            if cfg.changes_ids:
                ids[t] = torch.from_numpy(refine_ids(ids[t].numpy(), cfg))
            soft[t] = soft_mask(ids[t].numpy(), None, cfg.feather)
            progress.update(t + 1)
        return (ObjectMasks(ids, list(masks.object_ids), dict(masks.scores)), soft)


class CycleVOSGradientCorrect:
    DESCRIPTION = ("Refines ANY mask sequence (this pack's, SAM 2's, another tool's) by the paper's gradient correction "
                   "(Eq. 5): each corrected frame's mask is changed so that the network, given only that frame and mask, "
                   "reconstructs the reference frame's mask. Frames are corrected independently; the reference frame is kept.")
    CATEGORY = CATEGORY
    FUNCTION = "correct"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("The corrected masks (B, H, W), soft values in 0..1 at the frames' size.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _MODEL_IN,
                "frames": _FRAMES_IN,
                "masks": ("MASK", {"tooltip": "One mask per frame (B, H, W) of one object (or of all objects together)."}),
                "reference_frame": _int(0, 0, 1_000_000, "Index of the frame whose mask is trusted (usually the drawn one)."),
                "steps": _int(10, 1, 200, "N gradient steps per frame."),
                "rate": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10000.0, "step": 1.0,
                                   "tooltip": "Step size alpha (0 = the checkpoint's measured rate, else 150)."}),
                "every": _int(1, 1, 1000, "Correct every n-th frame counted from the reference (1 = all)."),
                "size": _SIZE_IN,
            },
            "optional": {
                "reference_mask": ("MASK", {"tooltip": "The reference frame's mask (default: masks[reference_frame])."}),
            },
        }

    def correct(self, model, frames, masks, reference_frame=0, steps=10, rate=0.0, every=1, size=240, reference_mask=None):
        from ..comfyui_cyclevos.correction import correct_sequence

        frames = _frames(frames)
        B, H, W, _ = frames.shape
        masks = _mask_batch(masks, "masks")
        if masks.shape[0] != B:
            raise InputError(f"{masks.shape[0]} masks for {B} frames: give one mask per frame")
        if tuple(masks.shape[-2:]) != (H, W):
            _fit_to_frames(tuple(masks.shape[-2:]), (H, W), "the masks")
            masks = F.interpolate(masks[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        ref = None
        if reference_mask is not None:
            ref = _mask_batch(reference_mask, "reference_mask")
            ref = ref[reference_frame] if ref.shape[0] == B and B > 1 else ref[0]
            if tuple(ref.shape) != (H, W):
                _fit_to_frames(tuple(ref.shape), (H, W), "the reference mask")
                ref = F.interpolate(ref[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        progress = _Progress(B)

        def report(done, total):
            progress.check()
            progress.update(done * B // max(1, total))

        out = correct_sequence(model.net, frames, masks, int(reference_frame), ref, int(steps),
                               float(rate) if rate > 0 else model.gc_rate, every=int(every), size=int(size),
                               device=model.device, progress=report, precision=model.precision)
        return (out.float().contiguous(),)


class CycleVOSCycleERF:
    DESCRIPTION = ("Cycle-ERF (paper Eq. 6): which pixels of a reference frame the network relies on to segment the "
                   "masked object in a target frame. Gives the map as a MASK and a heat map over the reference frame.")
    CATEGORY = CATEGORY
    FUNCTION = "compute"
    RETURN_TYPES = ("MASK", "IMAGE", "FLOAT")
    RETURN_NAMES = ("erf", "heatmap", "peak")
    OUTPUT_TOOLTIPS = ("The cycle-ERF in 0..1 over the reference frame, (1, H, W): the raw map divided by scale.",
                       "The map over the reference frame: colour and opacity follow the value, the reference object "
                       "outlined, a scale bar, (1, H, W, 3).",
                       "The raw map's peak: give it as another model's scale to draw both on one scale.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": _MODEL_IN,
            "frames": _FRAMES_IN,
            "target_frame": _int(0, 0, 1_000_000, "Index t of the frame whose object is explained."),
            "target_mask": ("MASK", {"tooltip": "The object's mask on the target frame: a single mask, or a batch "
                                                "with one mask per frame (the target frame's is used)."}),
            "reference_frame": _int(0, 0, 1_000_000, "Index l of the frame the map covers."),
            "steps": _int(50, 1, 1000, "M gradient steps (the paper's 50)."),
            "size": _SIZE_IN,
            "scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1e6, "step": 0.001,
                                "tooltip": "The raw value drawn as 1 (0: the map's own peak). Use another model's peak to compare."}),
        }, "optional": {
            "reference_mask": ("MASK", {"tooltip": "The object on the reference frame: its outline is drawn on the heat map."}),
        }}

    def compute(self, model, frames, target_frame, target_mask, reference_frame=0, steps=50, size=240, scale=0.0, reference_mask=None):
        from ..comfyui_cyclevos.config import CycleERFConfig
        from ..comfyui_cyclevos.cycle_erf import compute_cycle_erf, heatmap_overlay

        frames = _frames(frames)
        B, H, W, _ = frames.shape
        for name, i in (("target_frame", target_frame), ("reference_frame", reference_frame)):
            if not 0 <= i < B:
                raise InputError(f"{name} {i} does not exist: there are {B} frames (0..{B - 1})")
        m = _mask_batch(target_mask, "target_mask")
        m = m[target_frame] if m.shape[0] == B and B > 1 else m[0]
        if tuple(m.shape) != (H, W):
            _fit_to_frames(tuple(m.shape), (H, W), "the target mask")
            m = F.interpolate(m[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        target = m > 0.5
        if not bool(target.any()):
            raise InputError(f"the target mask is empty on frame {target_frame}: the object must be visible there")
        _Progress(1).check()
        outline = None
        if reference_mask is not None:
            r = _mask_batch(reference_mask, "reference_mask")
            r = r[reference_frame] if r.shape[0] == B and B > 1 else r[0]
            if tuple(r.shape) != (H, W):
                _fit_to_frames(tuple(r.shape), (H, W), "the reference mask")
                r = F.interpolate(r[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
            outline = (r > 0.5).numpy()
        result = compute_cycle_erf(model.net, frames[reference_frame], frames[target_frame], target.numpy(), int(size),
                                   CycleERFConfig(M=int(steps), alpha=model.gc_rate), model.device, model.precision,
                                   scale=float(scale) or None)
        heat = heatmap_overlay(_to_uint8(frames[reference_frame]), result.map, outline, result.scale)
        return (torch.from_numpy(result.map).float()[None], torch.from_numpy(heat).float().div_(255)[None], result.peak)


class CycleVOSSelectObject:
    DESCRIPTION = "One object's MASK for every frame, by its id (1 for the first object drawn, 2 for the second, ...)."
    CATEGORY = CATEGORY
    FUNCTION = "select"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("That object's mask per frame (B, H, W).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "masks": ("CYCLEVOS_MASKS", {"tooltip": "The per-object result of CycleVOS Propagate."}),
            "object_id": _int(1, 1, 255, "The object's id (its mask number, or its palette index in a colour mask)."),
        }}

    def select(self, masks, object_id=1):
        if object_id not in masks.object_ids:
            raise InputError(f"object {object_id} is not among the objects {masks.object_ids}")
        return ((masks.ids == object_id).float(),)


class CycleVOSOverlay:
    DESCRIPTION = "The frames with each object tinted in its palette colour and outlined: a preview IMAGE batch."
    CATEGORY = CATEGORY
    FUNCTION = "draw"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames with the masks drawn over them.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": _FRAMES_IN,
                "alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Opacity of the tint."}),
                "outline": _int(1, 0, 32, "Outline width in pixels (0 = none)."),
            },
            "optional": {
                "masks": ("CYCLEVOS_MASKS", {"tooltip": "Per-object result (each object in its own colour). Connect this OR mask."}),
                "mask": ("MASK", {"tooltip": "Any MASK batch (drawn as one object). Connect this OR masks."}),
            },
        }

    def draw(self, frames, alpha=0.5, outline=1, masks=None, mask=None):
        from ..comfyui_cyclevos.video_io import overlay

        frames = _frames(frames)
        B, H, W, _ = frames.shape
        if (masks is None) == (mask is None):
            raise InputError("connect either masks (CYCLEVOS_MASKS) or mask (MASK) to CycleVOS Overlay")
        ids = masks.ids if masks is not None else (_mask_batch(mask) > 0.5).to(torch.uint8)
        if ids.shape[0] not in (1, B):
            raise InputError(f"{ids.shape[0]} masks for {B} frames: give one mask per frame")
        if tuple(ids.shape[-2:]) != (H, W):
            _fit_to_frames(tuple(ids.shape[-2:]), (H, W), "the masks")
            ids = _resize_nearest(ids, (H, W))
        progress = _Progress(B)
        out = torch.empty_like(frames)
        for t in range(B):
            progress.check()
            drawn = overlay(_to_uint8(frames[t]), ids[t if ids.shape[0] > 1 else 0].numpy(), float(alpha), int(outline))
            out[t] = torch.from_numpy(drawn).float().div_(255)
            progress.update(t + 1)
        return (out,)


class CycleVOSSaveMasks:
    DESCRIPTION = ("Saves the masks in ComfyUI's output folder: a folder of palette PNGs (object ids as palette indices, "
                   "DAVIS colours, one file per frame) and/or an mp4 of the masks in the same colours.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the masks went: the PNG folder (or the video when only the video is saved).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename_prefix": ("STRING", {"default": "cyclevos/masks",
                                               "tooltip": "Name of the output, relative to ComfyUI's output folder; a counter is added (prefix_00001_)."}),
                "save_png": ("BOOLEAN", {"default": True, "tooltip": "Save a folder of palette PNGs, 00000.png, 00001.png, ..."}),
                "save_video": ("BOOLEAN", {"default": False, "tooltip": "Save an mp4 of the masks in palette colours."}),
                "fps": ("FLOAT", {"default": DEFAULT_FPS, "min": 0.1, "max": 1000.0, "step": 0.1,
                                  "tooltip": "Frame rate of the mask video (connect Load Video's fps)."}),
            },
            "optional": {
                "masks": ("CYCLEVOS_MASKS", {"tooltip": "Per-object result of Propagate. Connect this OR mask."}),
                "mask": ("MASK", {"tooltip": "Any MASK batch, saved as one object (id 1 where > 0.5). Connect this OR masks."}),
            },
        }

    def save(self, filename_prefix="cyclevos/masks", save_png=True, save_video=False, fps=DEFAULT_FPS, masks=None, mask=None):
        from ..comfyui_cyclevos.video_io import MaskVideoWriter, write_palette_png

        if (masks is None) == (mask is None):
            raise InputError("connect either masks (CYCLEVOS_MASKS) or mask (MASK) to CycleVOS Save Masks")
        if not (save_png or save_video):
            raise InputError("nothing to save: turn on save_png or save_video")
        ids = masks.ids if masks is not None else (_mask_batch(mask) > 0.5).to(torch.uint8)
        B, H, W = ids.shape
        folder, name, counter, subfolder = _save_target(filename_prefix, W, H)
        stem = f"{name}_{counter:05}_"
        progress = _Progress(B)
        ui_images = []
        png_dir = folder / stem
        partial = folder / f".{stem}.partial"  # renamed to png_dir when every frame is written
        writer = MaskVideoWriter(folder / f"{stem}.mp4", fps, (H, W)) if save_video else None
        try:
            if save_png:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            for t in range(B):
                progress.check()
                frame_ids = ids[t].numpy()
                if save_png:
                    write_palette_png(partial / f"{t:05d}.png", frame_ids)
                    ui_images.append({"filename": f"{t:05d}.png", "subfolder": _join(subfolder, stem), "type": "output"})
                if writer is not None:
                    writer.write(frame_ids)
                progress.update(t + 1)
            if writer is not None:
                writer.close()
            if save_png:
                os.replace(partial, png_dir)
        except BaseException:
            if writer is not None:
                writer.abort()
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if writer is not None:
            ui = {"images": [{"filename": f"{stem}.mp4", "subfolder": subfolder, "type": "output"}], "animated": (True,)}
        else:
            ui = {"images": ui_images}
        path = png_dir if save_png else folder / f"{stem}.mp4"
        return {"ui": ui, "result": (str(path),)}


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


def _save_target(prefix: str, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, name, counter, subfolder) for a new output, as ComfyUI's SaveImage numbers its files."""
    fp = _folder_paths()
    if fp is not None:
        folder, name, counter, subfolder, _ = fp.get_save_image_path(prefix, fp.get_output_directory(), width, height)
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder), name, counter, subfolder
    out = _output_dir().resolve()
    rel = Path(os.path.normpath(prefix))
    folder = (out / rel.parent).resolve()
    if os.path.commonpath((out, folder)) != str(out):
        raise InputError(f"filename_prefix {prefix!r} points outside the output folder")
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len(rel.name) + 1:].split("_")[0]) for p in folder.iterdir()
             if p.name.startswith(rel.name + "_") and p.name[len(rel.name) + 1:].split("_")[0].isdigit()]
    subfolder = "" if str(rel.parent) == "." else rel.parent.as_posix()
    return folder, rel.name, max(taken, default=0) + 1, subfolder


NODE_CLASS_MAPPINGS = {
    "CycleVOSLoadVideo": CycleVOSLoadVideo,
    "CycleVOSFirstFrameMask": CycleVOSFirstFrameMask,
    "CycleVOSKeyframe": CycleVOSKeyframe,
    "CycleVOSLoadModel": CycleVOSLoadModel,
    "CycleVOSPropagate": CycleVOSPropagate,
    "CycleVOSConfidence": CycleVOSConfidence,
    "CycleVOSRefineEdges": CycleVOSRefineEdges,
    "CycleVOSGradientCorrect": CycleVOSGradientCorrect,
    "CycleVOSCycleERF": CycleVOSCycleERF,
    "CycleVOSSelectObject": CycleVOSSelectObject,
    "CycleVOSOverlay": CycleVOSOverlay,
    "CycleVOSSaveMasks": CycleVOSSaveMasks,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CycleVOSLoadVideo": "CycleVOS Load Video",
    "CycleVOSFirstFrameMask": "CycleVOS First Frame Mask",
    "CycleVOSKeyframe": "CycleVOS Keyframe",
    "CycleVOSLoadModel": "CycleVOS Load Model",
    "CycleVOSPropagate": "CycleVOS Propagate",
    "CycleVOSConfidence": "CycleVOS Confidence",
    "CycleVOSRefineEdges": "CycleVOS Refine Edges",
    "CycleVOSGradientCorrect": "CycleVOS Gradient Correct",
    "CycleVOSCycleERF": "CycleVOS Cycle-ERF",
    "CycleVOSSelectObject": "CycleVOS Select Object",
    "CycleVOSOverlay": "CycleVOS Overlay",
    "CycleVOSSaveMasks": "CycleVOS Save Masks",
}
