"""Cycle-ERF (paper §3.4, Eq. 6): which pixels of a reference frame X_l the network relies on to segment
an object in a target frame X_t.

Starting from an all-zero mask on X_l, take M gradient steps that lower L(S({X_l}, {mask}, X_t), Y_t)
(the Eq. 5 update, unclamped, so that pixels can also go negative); the map is ReLU of the result,
normalised to 0..1. Works inside ``torch.inference_mode()`` like gradient correction.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .config import CycleERFConfig
from .correction import fixed_affinity, plain, reconstruction_loss
from .geometry import Geometry
from .network import CycleVOSNet
from .precision import Precision


def cycle_erf_map(
    net: CycleVOSNet, ref_x: torch.Tensor, target_x: torch.Tensor, target_mask: torch.Tensor, config: CycleERFConfig = CycleERFConfig(),
    precision: Precision | None = None,
) -> torch.Tensor:
    """ref_x, target_x (1, 3, Hp, Wp); target_mask (1, 1, Hp, Wp) -> cycle-ERF (Hp, Wp) in 0..1. Runs under
    ``precision``'s autocast, as gradient correction; the mask being descended stays float32."""
    autocast = precision.autocast() if precision is not None else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad(), autocast:
        ref_x, target_x, target_mask = plain(ref_x), plain(target_x), plain(target_mask)
        with torch.no_grad():
            ref_f, target_f = net.encode_frame(ref_x), net.encode_frame(target_x)
            affinity = fixed_affinity(net, ref_f, target_f)
        m = torch.zeros_like(target_mask)
        for _ in range(config.M):
            m.requires_grad_(True)
            loss = reconstruction_loss(net, m, ref_x, ref_f, target_x, target_f, target_mask, config.gamma, affinity)
            (grad,) = torch.autograd.grad(loss, m)
            m = (m - config.alpha * grad.float()).detach()
    return normalize_map(torch.relu(m[0, 0]))


def normalize_map(erf: torch.Tensor) -> torch.Tensor:
    peak = float(erf.max())
    return erf / peak if peak > 0 else erf


def compute_cycle_erf(
    net: CycleVOSNet, ref_frame, target_frame, target_mask, size: int = 240, config: CycleERFConfig = CycleERFConfig(),
    device: torch.device | None = None, precision: Precision | None = None,
) -> np.ndarray:
    """Frames as (H, W, 3) uint8 arrays or float tensors, target_mask (H, W) bool -> (H, W) float32 map
    in 0..1 at the frames' size."""
    device = device or next(net.parameters()).device
    H, W = ref_frame.shape[:2]
    geo = Geometry.for_frame(H, W, size)
    net = net.eval()
    ref_x, target_x = geo.frame_in(ref_frame, device), geo.frame_in(target_frame, device)
    y = geo.masks_in(torch.as_tensor(np.asarray(target_mask)).bool()[None], device)  # (1, 1, Hp, Wp)
    erf = cycle_erf_map(net, ref_x, target_x, y, config, precision)
    return normalize_map(geo.maps_out(erf[None, None])[0].clamp(min=0)).numpy()


def heatmap(erf: np.ndarray) -> np.ndarray:
    """(H, W) map in 0..1 -> (H, W, 3) uint8 colours (black-red-yellow-white ramp)."""
    v = np.clip(erf, 0, 1)[..., None]
    stops = np.array([[0, 0, 0], [180, 0, 0], [255, 200, 0], [255, 255, 255]], np.float32)
    pos = v * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    t = pos - i
    col = stops[i[..., 0]] * (1 - t) + stops[i[..., 0] + 1] * t
    return col.astype(np.uint8)


def heatmap_overlay(frame: np.ndarray, erf: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The heat map blended over the frame where the map is strong: (H, W, 3) uint8."""
    w = (alpha * np.clip(erf, 0, 1))[..., None]
    return (frame.astype(np.float32) * (1 - w) + heatmap(erf).astype(np.float32) * w).astype(np.uint8)
