"""Cycle-ERF (paper §3.4, Eq. 6): which pixels of a reference frame X_l the network relies on to segment
an object in a target frame X_t.

Starting from an all-zero mask on X_l, take M gradient steps that lower L(S({X_l}, {mask}, X_t), Y_t)
(the Eq. 5 update, unclamped, so that pixels can also go negative); the map is ReLU of the result,
smoothed at the network's input stride (``CycleERFConfig.smooth``). ``peak`` keeps its unnormalised
magnitude, so that two models can be drawn on one scale. Works inside ``torch.inference_mode()`` like
gradient correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import CycleERFConfig
from ..filters import gaussian_blur
from ..model.geometry import Geometry
from ..model.network import CycleVOSNet
from ..runtime.precision import Precision
from .correction import fixed_affinity, plain, reconstruction_loss


@dataclass
class CycleERF:
    """``map`` (H, W) float32 in 0..1: the ERF divided by ``scale`` (its own peak unless given) and
    clipped; ``peak``: the ERF's unnormalised maximum."""

    map: np.ndarray
    peak: float
    scale: float


def cycle_erf_map(
    net: CycleVOSNet,
    *,
    ref_x: torch.Tensor,
    target_x: torch.Tensor,
    target_mask: torch.Tensor,
    config: CycleERFConfig = CycleERFConfig(),
    precision: Precision | None = None,
) -> torch.Tensor:
    """ref_x, target_x (1, 3, Hp, Wp); target_mask (1, 1, Hp, Wp) -> the unnormalised cycle-ERF (Hp, Wp),
    ReLU'd and smoothed. Runs under ``precision``'s autocast, as gradient correction; the mask being
    descended stays float32."""
    precision = precision or Precision(ref_x.device)
    net = precision.network(net)
    with torch.inference_mode(False), torch.enable_grad(), precision.autocast():
        ref_x, target_x, target_mask = plain(ref_x), plain(target_x), plain(target_mask)
        with torch.no_grad():
            ref_f, target_f = net.encode_frame(ref_x), net.encode_frame(target_x)
            affinity = fixed_affinity(net, ref_f, target_f)
        m = torch.zeros_like(target_mask)
        for _ in range(config.steps):
            m.requires_grad_(True)
            loss = reconstruction_loss(net, m, ref_x, ref_f, target_x, target_f, target_mask, config.gamma, affinity)
            (grad,) = torch.autograd.grad(loss, m)
            m = (m - config.rate * grad.float()).detach()
    return gaussian_blur(torch.relu(m[0, 0]), config.smooth)


def compute_cycle_erf(
    net: CycleVOSNet,
    *,
    ref_frame,
    target_frame,
    target_mask,
    size: int = 240,
    config: CycleERFConfig = CycleERFConfig(),
    device: torch.device | None = None,
    precision: Precision | None = None,
    scale: float | None = None,
) -> CycleERF:
    """Frames as (H, W, 3) uint8 arrays or float tensors, target_mask (H, W) bool -> the map at the frames'
    size. ``scale`` (e.g. another model's peak) replaces the map's own peak as the value drawn as 1."""
    device = device or next(net.parameters()).device
    H, W = ref_frame.shape[:2]
    geo = Geometry.for_frame(H, W, size)
    net = net.eval()
    ref_x, target_x = geo.frame_in(ref_frame, device), geo.frame_in(target_frame, device)
    y = geo.masks_in(torch.as_tensor(np.asarray(target_mask)).bool()[None], device)  # (1, 1, Hp, Wp)
    erf = geo.maps_out(
        cycle_erf_map(net, ref_x=ref_x, target_x=target_x, target_mask=y, config=config, precision=precision)[
            None, None
        ]
    )[0].clamp(min=0)
    peak = float(erf.max())
    scale = float(scale) if scale else peak
    out = (erf / scale).clamp(0, 1) if scale > 0 else erf
    return CycleERF(out.numpy(), peak, scale)


# drawing -----------------------------------------------------------------------------------------
# A perceptual, colour-blind-safe ramp (viridis' endpoints and midpoints), dark = low, yellow = high.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def heatmap(erf: np.ndarray) -> np.ndarray:
    """(H, W) map in 0..1 -> (H, W, 3) uint8 colours of the perceptual ramp."""
    pos = np.clip(erf, 0, 1)[..., None] * (len(_RAMP) - 1)
    i = np.minimum(pos.astype(int), len(_RAMP) - 2)
    t = pos - i
    return (_RAMP[i[..., 0]] * (1 - t) + _RAMP[i[..., 0] + 1] * t).astype(np.uint8)


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of a (H, W) bool mask within ``width`` of its border."""
    m = torch.from_numpy(np.asarray(mask, bool)).float()[None, None]
    eroded = -F.max_pool2d(-m, 2 * width + 1, stride=1, padding=width)
    return (m - eroded)[0, 0].numpy() > 0


def heatmap_overlay(
    frame: np.ndarray, erf: np.ndarray, reference_mask: np.ndarray | None = None, scale: float | None = None
) -> np.ndarray:
    """An overlay read at a glance: the ramp's colour over a dimmed frame, opaque where the map is high
    and transparent where it is low; the reference object's outline in white; a scale bar in the
    bottom-right corner (0 to ``scale``, the value drawn as 1). (H, W, 3) uint8."""
    base = frame.astype(np.float32) * 0.6
    a = np.clip(erf, 0, 1)[..., None] ** 0.7 * 0.9
    out = base * (1 - a) + heatmap(erf).astype(np.float32) * a
    if reference_mask is not None:
        out[outline(reference_mask)] = 255
    return _scale_bar(out.astype(np.uint8), scale)


def _scale_bar(img: np.ndarray, scale: float | None) -> np.ndarray:
    from PIL import Image, ImageDraw

    H, W = img.shape[:2]
    bw, bh = max(40, W // 5), max(6, H // 40)
    x0, y0 = W - bw - 8, H - bh - 20
    if x0 < 0 or y0 < 0:
        return img
    img = img.copy()
    img[y0 : y0 + bh, x0 : x0 + bw] = heatmap(np.linspace(0, 1, bw)[None].repeat(bh, 0))
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    d.rectangle([x0 - 1, y0 - 1, x0 + bw, y0 + bh], outline=(255, 255, 255))
    d.text((x0, y0 + bh + 3), "0", fill=(255, 255, 255))
    label = f"{scale:.3g}" if scale else "max"
    d.text((x0 + bw - 6 * len(label), y0 + bh + 3), label, fill=(255, 255, 255))
    return np.array(pil)
