"""The guard of test-time adaptation: keep the adapted network's masks only when they follow the same
objects as the original network's, or follow them more steadily.

The cycle score cannot guard adaptation: adaptation maximises exactly that score (Eq. 2-4), so it rises
also on a video where adaptation drifts onto a look-alike. The guard compares the tracks of the original
and the adapted network on the same frames with signals adaptation never optimised:
- agreement: each frame's IoU between the two label maps, per object;
- size: the median over frames of |log(area adapted / area original)|;
- steadiness: each track's mean |log(area_t / area_t-1)|: a track that jumps to a look-alike or leaks into
  the background changes its area abruptly.
Adaptation that helps refines the same track. A drift shows as sustained disagreement (many frames where
the tracks barely overlap) or one track much larger or smaller than the other; then the original's masks
are kept, unless the adapted track is clearly the steadier one (the original drifted and adaptation fixed
it). Thresholds: ``config.GuardConfig``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..config import GuardConfig


@dataclass
class GuardDecision:
    use_adapted: bool
    agreement: float  # mean IoU over frames and objects
    disagree: float  # share of (frame, object) pairs below GuardConfig.low_iou
    size_ratio: float  # exp(median |log area ratio|)
    instability: tuple[float, float]  # (original, adapted): mean |log area change| per frame
    reason: str


class DriftGuard:
    """Fed the two label maps of each frame in processing order (``update``), decides at the end
    (``decide``). Holds a few numbers per frame and object, never the maps."""

    def __init__(self, object_ids: list[int], config: GuardConfig):
        self.ids, self.config = list(object_ids), config
        self.ious: list[float] = []
        self.log_ratios: list[float] = []
        self.changes: tuple[list[float], list[float]] = ([], [])
        self._previous: dict[int, tuple[float, float]] = {}

    def update(self, original: np.ndarray, adapted: np.ndarray) -> None:
        """(H, W) id maps of one frame from the original and the adapted network."""
        floor = self.config.min_area
        for i in self.ids:
            a, b = original == i, adapted == i
            union = int(np.count_nonzero(a | b))
            self.ious.append(1.0 if union == 0 else np.count_nonzero(a & b) / union)
            areas = (max(float(np.count_nonzero(a)), floor), max(float(np.count_nonzero(b)), floor))
            self.log_ratios.append(abs(math.log(areas[1] / areas[0])))
            if i in self._previous:
                for k in (0, 1):
                    self.changes[k].append(abs(math.log(areas[k] / self._previous[i][k])))
            self._previous[i] = areas

    def reset_time(self) -> None:
        """The next frame does not follow the last one (the backward pass starts at the keyframe again)."""
        self._previous.clear()

    def decide(self) -> GuardDecision:
        c = self.config
        ious = np.asarray(self.ious) if self.ious else np.ones(1)
        agreement, disagree = float(ious.mean()), float((ious < c.low_iou).mean())
        size_ratio = float(np.exp(np.median(self.log_ratios))) if self.log_ratios else 1.0
        io, ia = (float(np.mean(v)) if v else 0.0 for v in self.changes)
        where = f"{100 * disagree:.0f}% of frames below IoU {c.low_iou:g}, size ratio {size_ratio:.2f}"
        if disagree <= c.max_disagree and size_ratio <= c.max_size_ratio:
            return GuardDecision(True, agreement, disagree, size_ratio, (io, ia), f"same track: {where}")
        if io > 0 and ia <= c.steadier * io:  # strictly steadier: two equally steady tracks are not a fix
            reason = f"tracks differ ({where}) but the adapted one is steadier ({ia:.3f} vs {io:.3f})"
            return GuardDecision(True, agreement, disagree, size_ratio, (io, ia), reason)
        reason = f"tracks differ ({where}) and the adapted one is not steadier ({ia:.3f} vs {io:.3f}): original kept"
        return GuardDecision(False, agreement, disagree, size_ratio, (io, ia), reason)
