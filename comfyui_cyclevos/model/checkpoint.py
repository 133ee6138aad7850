"""Checkpoints carry their own ModelConfig; loading is strict and ``weights_only``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import WeightsError
from .network import CycleVOSNet

FORMAT = "cyclevos-1"
ENCODERS = ("lite0", "resnet18", "resnet50")


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
    config = _config_of(payload, path)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} has no state_dict of tensors: it is damaged; export or convert it again")
    _check_meta(payload.get("meta", {}), path)
    check_finite(state, path)
    try:
        net = CycleVOSNet(config)
    except (ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: its model config cannot be built ({e})") from None
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{what} {_names(keys)}"
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        ]
        raise WeightsError(f"{path} does not fit its model config: {'; '.join(parts)}; export or convert it again")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


MAX_WIDTH = 4096  # the widest layer any cyclevos or STM model has is 2048 channels


def _config_of(payload: dict, path: Path) -> ModelConfig:
    """The checkpoint's ModelConfig, checked before anything is allocated (a width of 10**7 would try to
    allocate tens of GB)."""
    d = payload.get("config")
    if not isinstance(d, dict):
        raise WeightsError(f"{path} has no model config: it is damaged; export or convert it again")
    try:
        config = ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path} has a bad model config ({e})") from None
    if config.encoder not in ENCODERS:
        raise WeightsError(f"{path}: unknown encoder {config.encoder!r} (known: {', '.join(ENCODERS)})")
    if config.memory_encoder not in ("fused", "stm") or config.second_mask not in ("others", "background"):
        raise WeightsError(f"{path}: unknown memory encoder {config.memory_encoder!r} / {config.second_mask!r}")
    widths = [config.key_dim, config.value_dim, *config.decoder_dims]
    if len(config.decoder_dims) != 3 or any(
        isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WIDTH for w in widths
    ):
        raise WeightsError(f"{path}: layer widths {widths} are not whole numbers 1..{MAX_WIDTH}: the file is damaged")
    return config


def _names(keys: list[str], n: int = 4) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_finite(state: dict, path) -> None:
    """Refuse weights holding NaN or infinity: they run, and give empty masks."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"{path} holds NaN or infinite weights ({_names(bad)}): the file is damaged or diverged")


def _check_meta(meta, path) -> dict:
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: its meta is a {type(meta).__name__}, not a dict: the file is damaged")
    rate = meta.get("gc_rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0
    ):
        raise WeightsError(f"{path}: its meta gc_rate is {rate!r}, not a finite rate >= 0: fix or re-export it")
    return meta


def checkpoint_meta(path: str | Path) -> dict:
    """The checkpoint's ``meta`` (e.g. the measured ``gc_rate``), checked."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"cannot read weights file {path} ({type(e).__name__})") from None
    if not isinstance(payload, dict):
        raise WeightsError(f"{path} is not a cyclevos checkpoint")
    return _check_meta(payload.get("meta", {}), path)


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
