"""The network for one video: adapted to it by the cycle loss (``cycle.adaptation``) and kept only when the
drift guard (``cycle.drift_guard``) finds that it follows the same objects as the original network, or
follows them more steadily.

The guard pass propagates the video with both networks side by side, with the config they are used with
(gradient correction included): the guard's thresholds were set on those tracks. With correction off the
original drifts further on some videos (dance-twirl on dev), and the guard then threw away a good adaptation. Frames are streamed: ``frames()`` gives a new iterator
over ``(index, frame)`` each time it is called (a ``FrameSource`` or a batch in memory can be read again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..config import InferenceConfig
from ..cycle.adaptation import AdaptResult, adapt
from ..cycle.drift_guard import DriftGuard, GuardDecision
from ..model.geometry import to_frame_tensor
from ..model.network import CycleVOSNet
from ..runtime.precision import Precision
from .engine import InferenceCore, propagate_both_ways

log = logging.getLogger("cyclevos")


@dataclass
class VideoAdaptation:
    """The network to segment the video with, the adaptation's record, and the guard's decision (None
    when the guard is off)."""

    net: CycleVOSNet
    adaptation: AdaptResult
    decision: GuardDecision | None
    skipped: str | None = None  # why the network was not adapted

    def summary(self) -> dict:
        a, d = self.adaptation, self.decision
        if self.skipped:
            return {"steps": 0, "used": "original", "skipped": self.skipped}
        out = {
            "steps": len(a.losses),
            "seconds": round(a.seconds, 3),
            "cycle_loss": [round(a.losses[0], 4), round(a.losses[-1], 4)] if a.losses else [],
            "used": "adapted" if self.net is a.net else "original",
        }
        if d is not None:
            out["guard"] = {
                "agreement": round(d.agreement, 4),
                "disagree": round(d.disagree, 4),
                "size_ratio": round(d.size_ratio, 4),
                "reason": d.reason,
            }
        return out


def _to_uint8(frame) -> np.ndarray:
    """A frame as (H, W, 3) uint8, checked as at the engine's door (``to_frame_tensor``): adaptation runs
    before the engine sees a frame, and must not train on a NaN or out-of-range one."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8:
        return frame
    t = to_frame_tensor(frame)[0].permute(1, 2, 0)  # (H, W, 3) float in 0..1
    return (t * 255 + 0.5).to(torch.uint8).numpy()


def guard_decision(
    net: CycleVOSNet,
    adapted: CycleVOSNet,
    frames: Callable[[], Iterable],
    keyframes: dict[int, np.ndarray],
    *,
    config: InferenceConfig,
    device: torch.device | None = None,
    precision: Precision | None = None,
    removals: dict[int, list[int]] | None = None,
) -> GuardDecision:
    """Propagate the video with ``net`` and ``adapted`` side by side (scores off) and decide."""
    plain = replace(config, confidence=replace(config.confidence, enabled=False))
    ids = sorted({int(i) for m in keyframes.values() for i in np.unique(m) if i != 0})
    guard = DriftGuard(ids, config.adapt.guard)
    runs = [
        propagate_both_ways(lambda n=n: InferenceCore(n, plain, device, precision), frames(), keyframes, removals)
        for n in (net, adapted)
    ]
    start, previous = min(keyframes), None
    for (key, _, original, _), (_, _, changed, _) in zip(*runs):
        if previous is not None and key < start <= previous:
            guard.reset_time()  # the backward pass starts again at the earliest keyframe
        previous = key
        guard.update(original, changed)
    return guard.decide()


def network_for_video(
    net: CycleVOSNet,
    frames: Callable[[], Iterable],
    keyframes: dict[int, np.ndarray],
    *,
    config: InferenceConfig,
    device: torch.device | None = None,
    precision: Precision | None = None,
    removals: dict[int, list[int]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VideoAdaptation:
    """Adapt ``net`` to the video (``config.adapt``) and guard it (``config.adapt.guard``). ``frames()``
    yields ``(index, frame)`` pairs in video order; ``progress(step, steps)`` as in ``adapt`` (it may raise
    to cancel). A network that adaptation does not support (the STM memory encoder, which encodes the
    masks with a second backbone) is used as it is, and the record says why."""
    if net.config.memory_encoder != "fused":
        reason = f"not supported for memory_encoder {net.config.memory_encoder!r}: the original network is used"
        log.warning("cyclevos: test-time adaptation %s", reason)
        return VideoAdaptation(net, AdaptResult(net), None, reason)
    result = adapt(
        net,
        (_to_uint8(frame) for _, frame in frames()),
        keyframes,
        config=config.adapt,
        size=config.size,
        device=device,
        precision=precision,
        progress=progress,
    )
    if not config.adapt.guard.enabled:
        chosen = VideoAdaptation(result.net, result, None)
    else:
        decision = guard_decision(
            net, result.net, frames, keyframes, config=config, device=device, precision=precision, removals=removals
        )
        chosen = VideoAdaptation(result.net if decision.use_adapted else net, result, decision)
    guard = "guard off" if chosen.decision is None else f"guard: {chosen.decision.reason}"
    log.info("cyclevos: adapted to the video in %.1f s (%d steps); %s", result.seconds, len(result.losses), guard)
    return chosen
