"""STM's soft aggregation of per-object probabilities into (background, objects...) probabilities."""

from __future__ import annotations

import torch

ODDS_CLAMP = 1e-7  # soft aggregation clamps each probability to [ODDS_CLAMP, 1 - ODDS_CLAMP]


def soft_aggregate(probs: torch.Tensor) -> torch.Tensor:
    """STM's soft aggregation of per-object foreground probabilities (B, O, H, W) into a distribution
    over background + objects (B, O+1, H, W) that sums to 1 at every pixel.

    STM takes the softmax of the logits log(p / (1 - p)); the exponential undoes the logarithm, so this
    normalises the odds p / (1 - p) directly: the same values in fewer full-resolution passes (gradient
    correction runs it forward and backward on every step)."""
    odds = aggregation_odds(probs)[1]
    return odds / odds.sum(1, keepdim=True)


def aggregation_odds(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object probabilities (B, O, H, W) -> the background's probability prod(1 - p) (B, 1, H, W) and
    the odds of [background, objects], each clamped to [ODDS_CLAMP, 1 - ODDS_CLAMP] first (B, O+1, H, W):
    what ``soft_aggregate`` normalises, and ``losses.aggregate_loss`` keeps for its gradient."""
    bg = torch.prod(1.0 - probs, dim=1, keepdim=True)
    em = torch.cat([bg, probs], 1).clamp(ODDS_CLAMP, 1 - ODDS_CLAMP)
    return bg, em / (1 - em)  # odds at most 1e7: a sum of them cannot overflow float32
