"""The mask reconstruction loss of the paper's Eq. 4, shared by training (Eq. 3), gradient correction
(Eq. 5) and cycle-ERF (Eq. 6)."""

from __future__ import annotations

import torch

from .aggregation import ODDS_CLAMP, aggregation_odds

PROB_CLAMP = 1e-6  # the cross-entropy clamps the prediction to [PROB_CLAMP, 1 - PROB_CLAMP]
IOU_EPS = 1e-6  # added to the soft IoU's sums: two empty masks overlap fully


def eq4_per_object(
    pred: torch.Tensor, target: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4 of each object (B, O), with the sums of min(pred, target) and max(pred, target) (B, O) it
    took. min and max are taken as (a + b -/+ |a - b|) / 2, which share one |a - b|: the same sums and the
    same gradient (1/2 each at a tie, as torch.minimum's) from one full-resolution pass instead of two."""
    p = pred.clamp(PROB_CLAMP, 1 - PROB_CLAMP)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean(dim=(-2, -1))
    both = (pred + target).sum(dim=(-2, -1))
    apart = (pred - target).abs().sum(dim=(-2, -1))
    inter, union = (both - apart) / 2, (both + apart) / 2
    return bce + gamma * (1 - (inter + IOU_EPS) / (union + IOU_EPS)), inter, union


def mask_loss(
    pred: torch.Tensor, target: torch.Tensor, gamma: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 4: per-pixel *mean* binary cross-entropy + gamma * (1 - soft IoU), soft IoU = sum(min)/sum(max).

    pred, target: (B, O, H, W) probabilities / masks in 0..1. ``valid`` (B, O) bool marks the objects
    that exist (padding objects in a batch are left out). Returns the mean over valid objects.
    """
    per_object = eq4_per_object(pred, target, gamma)[0]  # (B, O)
    if valid is None:
        return per_object.mean()
    valid = valid.to(per_object.dtype)
    return (per_object * valid).sum() / valid.sum().clamp(min=1)


def aggregate_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Eq. 4 of the objects' logits (B, O, H, W) through sigmoid and soft aggregation, against target
    (B, O, H, W), summed over the objects and averaged over the batch: the value of
    ``mask_loss(soft_aggregate(sigmoid(logits))[:, 1:], target, gamma) * O`` and its gradient with respect
    to the logits, written out (float32). Gradient correction (Eq. 5) and cycle-ERF (Eq. 6) descend it on
    every step, and autograd's chain through sigmoid, aggregation and the clamps takes more full-resolution
    passes (timings: docs/performance.md)."""
    return _AggregateLoss.apply(logits.float(), target.float(), gamma)


class _AggregateLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, gamma):
        p = torch.sigmoid(logits)  # (B, O, H, W)
        bg, odds = aggregation_odds(p)  # (B, 1, H, W), (B, O+1, H, W): soft_aggregate, keeping its parts
        total = odds.sum(1, keepdim=True)
        pred = odds[:, 1:] / total
        per_object, inter, union = eq4_per_object(pred, target, gamma)
        ctx.save_for_backward(p, bg, odds, total, pred, target, inter, union)
        ctx.gamma = gamma
        return per_object.sum() / p.shape[0]

    @staticmethod
    def backward(ctx, grad):
        p, bg, odds, total, pred, target, inter, union = ctx.saved_tensors
        B, _, H, W = p.shape
        # dL/dpred: the cross-entropy's, where its clamp passes, ...
        pc = pred.clamp(PROB_CLAMP, 1 - PROB_CLAMP)
        inside = (pred >= PROB_CLAMP) & (pred <= 1 - PROB_CLAMP)
        g = torch.where(inside, (pc - target) / (pc * (1 - pc) * (H * W)), 0.0)
        # ... and gamma (1 - soft IoU)'s: d/dinter = -a, d/dunion = b; dinter = (1 - s) / 2, dunion = (1 + s) / 2
        a = 1 / (union + IOU_EPS)
        b = (inter + IOU_EPS) * a * a
        s = torch.sign(pred - target)
        g = g + (ctx.gamma * (b - a) / 2)[..., None, None] + s * (ctx.gamma * (b + a) / 2)[..., None, None]
        g = g * (grad / B)  # (B, O, H, W)
        # pred = odds[1:] / total: the background's share carries no loss
        dot = (g * pred).sum(1, keepdim=True)  # (B, 1, H, W)
        g = torch.cat([-dot, g - dot], 1) / total  # dL/dodds (B, O+1, H, W)
        # odds = em / (1 - em): d/dem = (1 + odds)^2, where em = [bg, p] is inside the clamp
        em = torch.cat([bg, p], 1)
        g = torch.where((em >= ODDS_CLAMP) & (em <= 1 - ODDS_CLAMP), g * (1 + odds) ** 2, 0.0)
        # bg = prod(1 - p), p = sigmoid(z): dz_i = p_i (1 - p_i) (g_i - g_bg prod_{k != i} (1 - p_k))
        return p * ((1 - p) * g[:, 1:] - bg * g[:, :1]), None, None
