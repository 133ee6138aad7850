"""Online gradient correction (paper §3.3, Eq. 5).

A prediction Y^_t is good if the network, given only {X_t, Y^_t} as memory, reconstructs the reference
mask Y_1 on the reference frame X_1. So Y^_t takes N gradient steps that lower that reconstruction loss:

    Y^_t <- clamp(Y^_t - alpha * dL(S({X_t}, {Y^_t}, X_1), Y_1) / dY^_t, 0, 1)        (Eq. 5)

L is Eq. 4 per object, **summed** over the objects, and the step is alpha * (Hp*Wp / REFERENCE_AREA) *
(REFERENCE_STEPS / N): Eq. 4's cross-entropy is a per-pixel mean and its soft IoU a ratio of pixel sums,
so dL/dY per pixel shrinks with the number of pixels, and a mean over objects would divide each object's
gradient by their count. With the sum and the area factor, one alpha acts the same for 1 or 5 objects and
at any processing size; with the steps factor, N steps move the mask as far in all as the paper's 10 do,
so fewer, larger steps cost less for the same correction. alpha keeps the value it was tuned at (150,
one object at 240x432 in 10 steps, where both factors are 1).
Eq. 4 is taken where the decoder predicts, at 1/4: its logits before the x4 bilinear upsampling, against
each 4x4 cell's covered share of the reference mask (``loss_target``). The upsampling adds no
information, so the full-resolution sigmoid, aggregation and loss with their gradient are work each step
can skip; per-pixel means keep the loss's scale, so alpha is unchanged (the dev J&F of both, and the
speed-up, are in docs/quality.md and docs/performance.md). Cycle-ERF (Eq. 6), a map of the input pixels
drawn once, keeps the full resolution.
Everything that does not depend on Y^_t is computed once: both frames' encoder features, the decoder's
frame terms (query value and skip branches), and, with the fused memory encoder (mask-independent keys),
the read weights; each step then runs only the mask branch of the memory encoder and the decoder, forward
and backward, under the run's precision policy (the masks and their gradient stay float32). The
inference network's weights are frozen (``CycleVOSNet.for_inference``), so no graph is built for them.

``correct_sequence`` applies the same update after the fact to any mask sequence (this engine's or another
tool's), frame by frame against one reference frame and its mask, and hands back clean masks
(``clean_masks``): the gradient of Eq. 5 reaches every pixel the read attends to, so a step leaves soft
residue in the background (values up to ~0.5 far from the object on the demo clip). The engine never
memorises that residue (it keeps the hard label map); a MASK that feeds inpainting or compositing must not
carry it either.

It works inside ``torch.inference_mode()`` (ComfyUI runs every node there): it switches inference mode
off locally and clones any inference tensor it receives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields

import numpy as np
import torch
import torch.nn.functional as F

from ..config import CorrectionConfig
from ..errors import InputError
from ..filters import dilate_disk
from ..model.decoder import Decoder
from ..model.features import FrameFeatures
from ..model.geometry import Geometry
from ..model.losses import aggregate_loss
from ..model.network import CycleVOSNet
from ..runtime.precision import Precision

REFERENCE_AREA = 240 * 432  # processing pixels at which alpha is defined (a 16:9 frame at size 240)
REFERENCE_STEPS = 10  # steps N at which alpha is defined (the paper's)
EDGE_BAND_CELLS = 2  # soft edges: kept within this many decoder cells (4 processing pixels each) of the object


def plain(t):
    """A copy usable by autograd when ``t`` was made under inference mode (else ``t`` itself)."""
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(plain(x) for x in t)
    if isinstance(t, FrameFeatures):
        return FrameFeatures(*(plain(getattr(t, f.name)) for f in fields(t)))
    return t.clone() if t.is_inference() else t


def normalize_objects(masks: torch.Tensor) -> torch.Tensor:
    """Per-object soft masks (B, O, H, W) -> a distribution over background + objects (B, O+1, H, W),
    without the sharpening of ``soft_aggregate`` (the corrected masks are already probabilities)."""
    bg = torch.prod(1 - masks, dim=1, keepdim=True)
    probs = torch.cat([bg, masks], 1)
    return probs / probs.sum(1, keepdim=True).clamp(min=1e-6)


def reconstruction_logits(
    net: CycleVOSNet,
    masks: torch.Tensor,
    mem_frame: torch.Tensor,
    mem_features: FrameFeatures,
    query_frame: torch.Tensor,
    query_features: FrameFeatures,
    affinity: torch.Tensor | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """S({mem_frame}, {masks}, query_frame), Eq. 2, before the soft aggregation: masks (1, O, H, W) on the
    memory frame -> each object's logits (1, O, H, W) on the query frame, from that one memory frame alone
    (at the decoder's 1/4 without ``upsample``)."""
    k, v = net.memory_of(*net.memorize(mem_frame, masks, mem_features))  # (1, Ok, Ck, hw), (1, O, Cv, hw)
    return net.segment(query_frame, k, v, query_features, affinity=affinity, upsample=upsample)


def loss_target(masks: torch.Tensor) -> torch.Tensor:
    """Masks (B, O, H, W) -> each 4x4 cell's covered share (B, O, H/4, W/4): the target of Eq. 4 at the
    decoder's resolution, made once per correction."""
    return F.avg_pool2d(masks.float(), Decoder.STRIDE)


def reconstruction_loss(
    net: CycleVOSNet,
    masks: torch.Tensor,
    mem_frame: torch.Tensor,
    mem_features: FrameFeatures,
    query_frame: torch.Tensor,
    query_features: FrameFeatures,
    target: torch.Tensor,
    gamma: float,
    affinity: torch.Tensor | None = None,
) -> torch.Tensor:
    """L(S({mem_frame}, {masks}, query_frame), target): Eq. 4 of each object, summed over the objects, at
    the resolution of ``target`` on the query frame: (1, O, H, W) as the masks (cycle-ERF, Eq. 6), or the
    decoder's (1, O, H/4, W/4) from ``loss_target`` (gradient correction, Eq. 5)."""
    upsample = target.shape[-2:] == masks.shape[-2:]
    logits = reconstruction_logits(net, masks, mem_frame, mem_features, query_frame, query_features, affinity, upsample)
    return aggregate_loss(logits, target, gamma)


def step_size(rate, masks: torch.Tensor, steps: int) -> torch.Tensor:
    """Eq. 5's rate of each of ``steps`` steps for masks (1, O, Hp, Wp): alpha (a number, or one per
    object) scaled by the processing area and the step count (see the module doc) -> (1, 1 or O, 1, 1)."""
    a = torch.as_tensor(rate, dtype=torch.float32, device=masks.device).reshape(1, -1, 1, 1)
    return a * (masks.shape[-2] * masks.shape[-1] / REFERENCE_AREA) * (REFERENCE_STEPS / steps)


def fixed_affinity(net: CycleVOSNet, mem_features: FrameFeatures, query_features: FrameFeatures) -> torch.Tensor | None:
    """The read weights of a one-frame memory when they do not depend on its mask (the fused encoder)."""
    if net.config.memory_encoder != "fused":
        return None
    with torch.no_grad():
        key = mem_features.key.flatten(-2)[:, None]  # (1, 1, Ck, hw)
        return net.affinity(key, query_features.key)


def gradient_correct(
    net: CycleVOSNet,
    masks: torch.Tensor,
    frame: torch.Tensor,
    features: FrameFeatures,
    *,
    ref_frame: torch.Tensor,
    ref_features: FrameFeatures,
    ref_masks: torch.Tensor,
    steps: int = CorrectionConfig.steps,
    rate: float | Sequence[float] | torch.Tensor = CorrectionConfig.rate,
    gamma: float = CorrectionConfig.gamma,
    return_losses: bool = False,
    precision: Precision | None = None,
):
    """Eq. 5 for every object at once: masks (1, O, H, W) soft masks of ``frame`` -> corrected masks.
    ``rate`` (α) is one rate for all objects or a sequence of one per object (0 leaves an object as it is);
    ``ref_masks`` (1, O, H, W) are the reference Y_1 on ``ref_frame``, whose features are ``ref_features``.

    With ``return_losses`` also returns the reconstruction loss before each step and after the last.
    """
    precision = precision or Precision(frame.device)
    with torch.inference_mode(False), torch.enable_grad(), precision.autocast():
        masks, frame, features = plain(masks).detach().float(), plain(frame), plain(features)
        ref_frame, ref_features, target = plain(ref_frame), plain(ref_features), loss_target(ref_masks)
        affinity = fixed_affinity(net, features, ref_features)
        step = step_size(rate, masks, steps)
        losses = []
        for _ in range(steps):
            m = masks.clone().requires_grad_(True)
            loss = reconstruction_loss(net, m, frame, features, ref_frame, ref_features, target, gamma, affinity)
            (grad,) = torch.autograd.grad(loss, m)
            if return_losses:
                losses.append(loss.detach())
            masks = (m - step * grad).clamp(0.0, 1.0).detach()
        if return_losses:
            with torch.no_grad():
                losses.append(
                    reconstruction_loss(net, masks, frame, features, ref_frame, ref_features, target, gamma, affinity)
                )
            return masks, [float(x) for x in losses]
    return masks


def hard_labels(masks: torch.Tensor) -> torch.Tensor:
    """Soft masks (..., O, H, W) -> the engine's label rule as one-hot float masks of the same shape: each
    pixel goes to the most likely of background and objects (``normalize_objects``); for one object, the
    pixels above 0.5 (0.5 itself is background)."""
    probs = normalize_objects(masks.float().reshape(-1, *masks.shape[-3:]))
    label = probs.argmax(1, keepdim=True)  # 0 = background
    ids = torch.arange(1, masks.shape[-3] + 1, device=masks.device).view(1, -1, 1, 1)
    return (label == ids).float().reshape(masks.shape)


def edge_band(H: int, W: int, size: int) -> int:
    """Pixels, at an (H, W) frame processed at short side ``size``, within which ``clean_masks`` keeps soft
    values around the object: ``EDGE_BAND_CELLS`` cells of the decoder's 1/4 grid, where correction acts."""
    return max(1, math.ceil(EDGE_BAND_CELLS * Decoder.STRIDE * min(H, W) / size))


def clean_masks(masks: torch.Tensor, *, soft_edges: bool = False, band: int = 8) -> torch.Tensor:
    """Masks (T, H, W) of one object or (T, O, H, W) after correction -> masks without the background
    residue that the correction leaves (see the module doc).

    The rule is the engine's own: a pixel belongs to an object where the hard label map (``hard_labels``,
    the map the engine memorises) gives it to that object. By default the result IS that map, 0 or 1 per
    object (feathering is Refine Edges' job). With ``soft_edges`` each object keeps its soft values inside
    its hard mask dilated by a disk of ``band`` pixels (the edge the correction moved) and is 0 beyond it,
    so that a residue far from the object never reaches the output either way.
    """
    single = masks.ndim == 3
    m = (masks[:, None] if single else masks).float().clamp(0, 1)
    hard = hard_labels(m)
    if soft_edges:
        near = np.stack([np.stack([dilate_disk(h > 0.5, band) for h in frame]) for frame in hard.cpu().numpy()])
        out = m * torch.from_numpy(near).to(m.device)
    else:
        out = hard
    return out[:, 0] if single else out


def correct_sequence(
    net: CycleVOSNet,
    frames,
    masks: torch.Tensor,
    *,
    reference_index: int = 0,
    reference_mask: torch.Tensor | None = None,
    steps: int = CorrectionConfig.steps,
    rate: float = CorrectionConfig.rate,
    gamma: float = CorrectionConfig.gamma,
    every: int = 1,
    size: int = 240,
    device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    precision: Precision | None = None,
    soft_edges: bool = False,
) -> torch.Tensor:
    """Eq. 5 applied after the fact to ANY mask sequence (this engine's, SAM 2's, hand-drawn...).

    frames: (T, H, W, 3) float tensor in 0..1 or uint8 array; masks: (T, H, W) soft or binary masks of
    one object, or (T, O, H, W) of O objects, at the frames' size. Each frame t with
    ``|t - reference_index| % every == 0`` (the reference itself excepted) is corrected on its own
    (no memory is carried between frames) against the reference frame and its mask (``reference_mask``,
    (H, W) or (O, H, W); default ``masks[reference_index]``). The correction is computed at a short
    side of ``size`` and added to the mask at its own size as a difference, so edges and details are
    kept wherever the gradient does not act. Returns (T, H, W) or (T, O, H, W) float32 in 0..1 on the CPU,
    every frame passed through ``clean_masks``: the hard label map by default, with ``soft_edges`` the soft
    values within ``edge_band`` pixels of each object (so frames not corrected keep binary masks as they are).

    ``progress(done, total)`` is called before each frame (done = frames finished so far) and may raise
    to stop the run. Works inside ``torch.inference_mode()``.
    """
    single = masks.ndim == 3
    m_all = (masks[:, None] if single else masks).float()
    T, O, H, W = m_all.shape
    if len(frames) != T:
        raise InputError(f"{len(frames)} frames but {T} masks: give one mask per frame")
    if not 0 <= reference_index < T:
        raise InputError(f"reference frame {reference_index} does not exist: the video has {T} frames (0..{T - 1})")
    if every < 1 or steps < 1:
        raise InputError("every and steps must be at least 1")
    ref = m_all[reference_index] if reference_mask is None else reference_mask.float()
    ref = ref[None] if ref.ndim == 2 else ref
    if tuple(ref.shape) != (O, H, W):
        raise InputError(
            f"the reference mask is {tuple(ref.shape)} but the masks are {(O, H, W)} per frame: give it at the frames' size"
        )
    if not bool((ref > 0.5).any()):
        raise InputError("the reference mask is empty: the reference frame needs the object drawn on it")
    device = device or next(net.parameters()).device
    precision = precision or Precision(device)
    net = precision.network(net.eval())
    geo = Geometry.for_frame(H, W, size)
    out = m_all.detach().cpu().clone().clamp_(0, 1)
    todo = [t for t in range(T) if t != reference_index and abs(t - reference_index) % every == 0]
    with torch.no_grad(), precision.autocast():
        ref_x = geo.frame_in(frames[reference_index], device)
        ref_features = net.encode_frame(ref_x)
        ref_m = geo.masks_in(ref.clamp(0, 1), device)
    for done, t in enumerate(todo):
        if progress is not None:
            progress(done, len(todo))
        with torch.no_grad(), precision.autocast():
            x = geo.frame_in(frames[t], device)
            features = net.encode_frame(x)
        m_in = geo.masks_in(out[t], device)
        corrected = gradient_correct(
            net,
            m_in,
            x,
            features,
            ref_frame=ref_x,
            ref_features=ref_features,
            ref_masks=ref_m,
            steps=steps,
            rate=rate,
            gamma=gamma,
            precision=precision,
        )
        delta = geo.maps_out(corrected - m_in)  # (O, H, W) at the frame's size
        out[t] = (out[t] + delta).clamp_(0, 1)
    if progress is not None:
        progress(len(todo), len(todo))
    out = clean_masks(out, soft_edges=soft_edges, band=edge_band(H, W, size))
    return out[:, 0] if single else out
