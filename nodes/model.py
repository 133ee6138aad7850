"""Loading networks: checkpoints from models/cyclevos/ or the pack's weights/, a small cache of loaded ones."""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path

import torch

from ..comfyui_cyclevos.errors import InputError
from .common import (
    CATEGORY,
    CHECKPOINT_EXTENSIONS,
    CORE_ROOT,
    MODEL_FOLDER,
    PACK_ROOT,
    CycleVOSModel,
    _comfy_device,
    _folder_paths,
)

# Networks loaded and still referenced (by ComfyUI's output cache or a running node) are found again here;
# weak values, so that when ComfyUI drops its references (POST /free) the network is freed, not kept by us.
_MODEL_CACHE: weakref.WeakValueDictionary[tuple, CycleVOSModel] = weakref.WeakValueDictionary()
_MODEL_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()


def _model_patcher(net, device: torch.device):
    """A ``comfy.model_patcher.ModelPatcher`` for ``net`` inside ComfyUI (loads to ``device``, offloads to
    ComfyUI's offload device), else None."""
    try:
        import comfy.model_management as mm
        import comfy.model_patcher
    except ImportError:
        return None
    return comfy.model_patcher.ModelPatcher(net, load_device=device, offload_device=mm.unet_offload_device())


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
    from ..comfyui_cyclevos.model.checkpoint import DEFAULT_WEIGHTS

    fp = _folder_paths()
    if fp is not None:
        _register_model_folder(fp)
        names = [
            n for n in fp.get_filename_list(MODEL_FOLDER) if os.path.splitext(n)[1].lower() in CHECKPOINT_EXTENSIONS
        ]
    else:
        names = sorted(
            {
                p.name
                for d in _fallback_model_dirs()
                if d.is_dir()
                for p in d.iterdir()
                if p.is_file() and p.suffix.lower() in CHECKPOINT_EXTENSIONS
            }
        )
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
        candidate = (d / name).resolve()
        if candidate.is_file() and d.resolve() in candidate.parents:  # never ../ or an absolute name out of d
            return candidate
    p = Path(name).expanduser()
    if fp is None and p.is_absolute() and p.is_file():  # outside ComfyUI (scripts, tests): any path
        return p
    where = "ComfyUI's models/cyclevos/ or the pack's weights/" if fp is not None else "the pack's weights/"
    raise InputError(
        f"checkpoint {name!r} not found in {where}: put a cyclevos .pt file there "
        "(or convert STM weights with 'cyclevos convert') and refresh"
    )


def _resolve_device(device: str, precision: str):
    """The device, and the precision resolved for it by the library's policy (``auto``: fp16 on CUDA,
    bf16 on CPUs with native bf16, fp32 elsewhere; one it cannot run is an error)."""
    from ..comfyui_cyclevos.runtime.device import pick_device
    from ..comfyui_cyclevos.runtime.precision import pick_precision

    if device == "auto":
        dev = _comfy_device()
        dev = dev if dev is not None and dev.type in ("cpu", "cuda") else pick_device("auto")
    else:
        dev = pick_device(device)
    return dev, pick_precision(dev, precision)


def load_model(path: str | os.PathLike, device: str = "auto", precision: str = "auto") -> CycleVOSModel:
    """Load a checkpoint once: later calls with the same file (path, size, mtime), device and precision
    get the same object; a changed file is read again and its stale entries dropped."""
    from ..comfyui_cyclevos.config import CorrectionConfig
    from ..comfyui_cyclevos.model.checkpoint import checkpoint_meta, load_checkpoint

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
            return hit
        for k in [
            k for k in list(_MODEL_CACHE.keys()) if k[0] == key[0]
        ]:  # the file changed: drop what was read before
            _MODEL_CACHE.pop(k, None)
        net = load_checkpoint(
            path, "cpu"
        )  # for inference: weights frozen, correction differentiates w.r.t. the mask only
        gc_rate = float(checkpoint_meta(path).get("gc_rate", CorrectionConfig.rate))
        patcher = _model_patcher(net, dev)
        if patcher is None:
            with torch.inference_mode(False):  # ordinary tensors, as load_checkpoint makes them
                net.to(dev)
        model = CycleVOSModel(net, dev, precision, str(path), gc_rate, patcher)
        _MODEL_CACHE[key] = model
        return model


class CycleVOSLoadModel:
    DESCRIPTION = (
        "Loads a cyclevos checkpoint from ComfyUI's models/cyclevos/ folder or the pack's weights/ folder. "
        "It is loaded once and reused by later runs while the file, device and precision stay the same."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("CYCLEVOS_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The network, for the Propagate, Gradient Correct and Cycle-ERF nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (
                    list_checkpoints(),
                    {"tooltip": "A cyclevos .pt checkpoint (models/cyclevos/ or the pack's weights/)."},
                ),
                "device": (
                    ["auto", "cpu", "cuda"],
                    {"default": "auto", "tooltip": "auto: ComfyUI's device if it is a CUDA GPU, else the CPU."},
                ),
                "precision": (
                    ["auto", "fp32", "bf16", "fp16"],
                    {
                        "default": "auto",
                        "tooltip": "Autocast dtype. auto: fp16 on a CUDA GPU, bf16 on CPUs that run it natively, fp32 elsewhere.",
                    },
                ),
            }
        }

    def load(self, checkpoint, device="auto", precision="auto"):
        return (load_model(resolve_checkpoint(checkpoint), device, precision),)
