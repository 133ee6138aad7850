"""Online gradient correction (paper §3.3, Eq. 5).

A prediction Y^_t is good if the network, given only {X_t, Y^_t} as memory, reconstructs the reference
mask Y_1 on the reference frame X_1. So Y^_t takes N gradient steps that lower that reconstruction loss:

    Y^_t <- clamp(Y^_t - alpha * dL(S({X_t}, {Y^_t}, X_1), Y_1) / dY^_t, 0, 1)        (Eq. 5)

L is Eq. 4 with the cross-entropy as a per-pixel *mean*, hence the large default alpha (150).
Everything that does not depend on Y^_t is computed once: both frames' encoder features, the decoder's
skip branches, and, with the fused memory encoder (mask-independent keys), the read weights; each step
then runs only the mask branch of the memory encoder and the decoder, forward and backward.

It works inside ``torch.inference_mode()`` (ComfyUI runs every node there): it switches inference mode
off locally and clones any inference tensor it receives.
"""
from __future__ import annotations

from dataclasses import fields

import torch

from .losses import mask_loss
from .network import CycleVOSNet, FrameFeatures, soft_aggregate


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
    """L(S({mem_frame}, {masks}, query_frame), target), Eq. 4: masks (1, O, H, W) on the memory frame,
    target (1, O, H, W) on the query frame. Eq. 5 (correction) and Eq. 6 (cycle-ERF) both descend it."""
    k, v = net.memorize(mem_frame, masks, mem_features)  # (1, Ok, Ck, h, w), (1, O, Cv, h, w)
    logits = net.segment(query_frame, k[:, :, None], v[:, :, None], query_features, affinity=affinity)
    pred = soft_aggregate(torch.sigmoid(logits))[:, 1:]  # (1, O, H, W)
    return mask_loss(pred, target, gamma)


def gradient_correct(
    net: CycleVOSNet,
    masks: torch.Tensor,
    frame: torch.Tensor,
    features: FrameFeatures,
    ref_frame: torch.Tensor,
    ref_features: FrameFeatures,
    ref_masks: torch.Tensor,
    steps: int = 10,
    alpha: float = 150.0,
    gamma: float = 1.0,
    return_losses: bool = False,
):
    """Eq. 5 for every object at once: masks (1, O, H, W) soft masks of ``frame`` -> corrected masks.

    With ``return_losses`` also returns the reconstruction loss before each step and after the last.
    """
    with torch.inference_mode(False), torch.enable_grad():
        masks, frame, features = plain(masks).detach(), plain(frame), plain(features)
        ref_frame, ref_features, ref_masks = plain(ref_frame), plain(ref_features), plain(ref_masks)
        affinity = None
        if net.config.memory_encoder == "fused":  # keys do not depend on the mask: read weights are fixed
            with torch.no_grad():
                affinity = net.affinity(features.key[:, None, None], ref_features.key)
        losses = []
        for _ in range(steps):
            m = masks.clone().requires_grad_(True)
            loss = reconstruction_loss(net, m, frame, features, ref_frame, ref_features, ref_masks, gamma, affinity)
            (grad,) = torch.autograd.grad(loss, m)
            losses.append(loss.item())
            masks = (m - alpha * grad).clamp(0.0, 1.0).detach()
        if return_losses:
            with torch.no_grad():
                losses.append(float(reconstruction_loss(net, masks, frame, features, ref_frame, ref_features, ref_masks, gamma, affinity)))
            return masks, losses
    return masks
