"""Checkpoints carry their own ModelConfig; loading is strict and ``weights_only``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import WeightsError
from .network import CycleVOSNet

FORMAT = "cyclevos-1"


def save_checkpoint(path: str | Path, net: CycleVOSNet, *, extra: dict | None = None, half: bool = False) -> None:
    """Atomic write (a temporary file renamed into place), so an interrupted save leaves nothing."""
    if net.inference_only:
        raise ValueError(
            "this network was loaded for inference (batch norm folded, weights frozen): load the "
            "checkpoint with for_inference=False to save it"
        )
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "config": net.config.to_dict(), "state_dict": state, "meta": dict(extra or {})}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu", *, for_inference: bool = True) -> CycleVOSNet:
    """The network of a checkpoint, in eval mode on ``device``. Its weights are ordinary tensors even when
    loaded inside ``torch.inference_mode()`` (as in ComfyUI), so gradient correction and cycle-ERF, which
    differentiate through the network, can use it there. By default it is ready for inference only
    (``CycleVOSNet.for_inference``: batch norms folded, weights frozen); pass ``for_inference=False`` to
    train it or to save it again."""
    with torch.inference_mode(False):
        net = _load_checkpoint(Path(path), device)
        return net.for_inference() if for_inference else net


def _load_checkpoint(path: Path, device: torch.device | str) -> CycleVOSNet:
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} not found: pass --weights PATH to a cyclevos checkpoint, or reinstall the pack to restore weights/"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot read weights file {path} ({type(e).__name__}): it is not a cyclevos checkpoint; convert STM weights with 'cyclevos convert'"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightsError(
            f"{path} is not a cyclevos checkpoint; convert STM / STM-cycle weights first with 'cyclevos convert'"
        )
    net = CycleVOSNet(ModelConfig.from_dict(payload["config"]))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def checkpoint_meta(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True).get("meta", {})


DEFAULT_WEIGHTS = "cyclevos-lite.pt"


def default_weights_path() -> Path:
    """The shipped checkpoint: ``weights/`` beside the package in a checkout (and in ComfyUI's
    custom_nodes), or inside it when pip-installed."""
    package = Path(__file__).resolve().parents[1]  # comfyui_cyclevos/
    candidates = (package / "weights" / DEFAULT_WEIGHTS, package.parent / "weights" / DEFAULT_WEIGHTS)
    return next((p for p in candidates if p.is_file()), candidates[-1])


def export(src: str | Path, dst: str | Path, **meta) -> Path:
    """Ship a training checkpoint: fp16 tensors, with extra metadata (e.g. the measured ``gc_rate``)."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    net = load_checkpoint(src, for_inference=False)
    save_checkpoint(dst, net, extra={**payload.get("meta", {}), **meta}, half=True)
    return Path(dst)
