"""The paper's uses of the cycle as nodes: the confidence report, gradient correction of any mask sequence
(Eq. 5), and cycle-ERF maps (Eq. 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..comfyui_cyclevos.config import CorrectionConfig
from ..comfyui_cyclevos.errors import InputError
from ..comfyui_cyclevos.media.frames import to_uint8
from .common import (
    _FRAMES_IN,
    _MODEL_IN,
    _SIZE_IN,
    CATEGORY,
    _fit_to_frames,
    _frame_mask,
    _frames,
    _int,
    _mask_batch,
    _Progress,
)


class CycleVOSConfidence:
    DESCRIPTION = (
        "Where did tracking fail? Propagate scores every K-th frame's mask by the paper's cycle check: from that "
        "frame and its mask alone, the network predicts the drawn mask back (Eq. 2); a low score means the mask "
        "likely drifted. Gives a plot of the scores over time and the frames to fix first."
    )
    CATEGORY = CATEGORY
    FUNCTION = "report"
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("plot", "suggested_frames", "scores_csv")
    OUTPUT_TOOLTIPS = (
        "Each object's score (0 bottom, 1 top) over the frames; suggested frames in grey.",
        "The frames to correct first, comma-separated: only frames scored under 0.5 or clearly below the rest "
        "(median - max(0.1, 3 robust deviations)), spread over the video; 'none needed' when there are none.",
        "frame,object,score rows.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "masks": ("CYCLEVOS_MASKS", {"tooltip": "From CycleVOS Propagate with confidence on."}),
                "count": _int(3, 1, 100, "The most frames to suggest (fewer, or none, when fewer are low)."),
            }
        }

    def report(self, masks, count=3):
        from ..comfyui_cyclevos.cycle.confidence import describe_suggestions, plot_scores, suggest_keyframes

        if not masks.scores:
            raise InputError("these masks carry no cycle scores: turn on confidence in CycleVOS Propagate")
        B = masks.ids.shape[0]
        suggested = suggest_keyframes(masks.scores, int(count), B)
        plot = torch.from_numpy(plot_scores(masks.scores, suggested, B)).float()[None] / 255
        rows = ["frame,object,score"] + [
            f"{t},{o},{v:.4f}" for t in sorted(masks.scores) for o, v in sorted(masks.scores[t].items())
        ]
        return (plot, describe_suggestions(suggested), "\n".join(rows))


class CycleVOSGradientCorrect:
    DESCRIPTION = (
        "Refines ANY mask sequence (this pack's, SAM 2's, another tool's) by the paper's gradient correction "
        "(Eq. 5): each corrected frame's mask is changed so that the network, given only that frame and mask, "
        "reconstructs the reference frame's mask. Frames are corrected independently; the reference frame is kept."
    )
    CATEGORY = CATEGORY
    FUNCTION = "correct"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = (
        "The corrected masks (B, H, W) at the frames' size: 0 or 1 (the engine's hard label map), or with "
        "soft_edges soft values near the object and 0 away from it.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _MODEL_IN,
                "frames": _FRAMES_IN,
                "masks": (
                    "MASK",
                    {"tooltip": "One mask per frame (B, H, W) of one object (or of all objects together)."},
                ),
                "reference_frame": _int(
                    0, 0, 1_000_000, "Index of the frame whose mask is trusted (usually the drawn one)."
                ),
                "gc_steps": _int(
                    CorrectionConfig.steps,
                    1,
                    200,
                    "N gradient steps per frame (the rate is quoted at 10: fewer steps take larger ones).",
                ),
                "gc_rate": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 10000.0,
                        "step": 1.0,
                        "tooltip": "Step size α (0 = the checkpoint's measured rate, else 150).",
                    },
                ),
                "gc_every": _int(1, 1, 1000, "Correct every n-th frame counted from the reference (1 = all)."),
                "size": _SIZE_IN,
            },
            "optional": {
                "reference_mask": (
                    "MASK",
                    {"tooltip": "The reference frame's mask (default: masks[reference_frame])."},
                ),
                "soft_edges": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Keep the soft values the correction gives near the object's edge (2 decoder "
                        "cells wide); off: a clean 0/1 mask. Residue away from the object is removed either way.",
                    },
                ),
            },
        }

    def correct(
        self,
        model,
        frames,
        masks,
        reference_frame=0,
        gc_steps=CorrectionConfig.steps,
        gc_rate=0.0,
        gc_every=1,
        size=240,
        reference_mask=None,
        soft_edges=None,  # off unless turned on
    ):
        from ..comfyui_cyclevos.cycle.correction import correct_sequence

        frames = _frames(frames)
        B, H, W, _ = frames.shape
        masks = _mask_batch(masks, "masks")
        if masks.shape[0] != B:
            raise InputError(f"{masks.shape[0]} masks for {B} frames: give one mask per frame")
        if tuple(masks.shape[-2:]) != (H, W):
            _fit_to_frames(tuple(masks.shape[-2:]), (H, W), "the masks")
            masks = F.interpolate(masks[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        ref = (
            None
            if reference_mask is None
            else _frame_mask(reference_mask, reference_frame, B, (H, W), "reference_mask")
        )
        progress = _Progress(B)

        def report(done, total):
            progress.check()
            progress.update(done * B // max(1, total))

        out = correct_sequence(
            model.ready(),
            frames,
            masks,
            reference_index=int(reference_frame),
            reference_mask=ref,
            steps=int(gc_steps),
            rate=float(gc_rate) if gc_rate > 0 else model.gc_rate,
            every=int(gc_every),
            size=int(size),
            device=model.device,
            progress=report,
            precision=model.precision,
            soft_edges=bool(soft_edges),
        )
        return (out.float().contiguous(),)


class CycleVOSCycleERF:
    DESCRIPTION = (
        "Cycle-ERF (paper Eq. 6): which pixels of a reference frame the network relies on to segment the "
        "masked object in a target frame. Gives the map as a MASK and a heat map over the reference frame."
    )
    CATEGORY = CATEGORY
    FUNCTION = "compute"
    RETURN_TYPES = ("MASK", "IMAGE", "FLOAT")
    RETURN_NAMES = ("erf", "heatmap", "peak")
    OUTPUT_TOOLTIPS = (
        "The cycle-ERF in 0..1 over the reference frame, (1, H, W): the raw map divided by scale.",
        "The map over the reference frame: colour and opacity follow the value, the reference object "
        "outlined, a scale bar, (1, H, W, 3).",
        "The raw map's peak: give it as another model's scale to draw both on one scale.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _MODEL_IN,
                "frames": _FRAMES_IN,
                "target_frame": _int(0, 0, 1_000_000, "Index t of the frame whose object is explained."),
                "target_mask": (
                    "MASK",
                    {
                        "tooltip": "The object's mask on the target frame: a single mask, or a batch "
                        "with one mask per frame (the target frame's is used)."
                    },
                ),
                "reference_frame": _int(0, 0, 1_000_000, "Index l of the frame the map covers."),
                "steps": _int(50, 1, 1000, "M gradient steps (the paper's 50)."),
                "size": _SIZE_IN,
                "scale": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1e6,
                        "step": 0.001,
                        "tooltip": "The raw value drawn as 1 (0: the map's own peak). Use another model's peak to compare.",
                    },
                ),
            },
            "optional": {
                "reference_mask": (
                    "MASK",
                    {"tooltip": "The object on the reference frame: its outline is drawn on the heat map."},
                ),
            },
        }

    def compute(
        self,
        model,
        frames,
        target_frame,
        target_mask,
        reference_frame=0,
        steps=50,
        size=240,
        scale=0.0,
        reference_mask=None,
    ):
        from ..comfyui_cyclevos.config import CycleERFConfig
        from ..comfyui_cyclevos.cycle.erf import compute_cycle_erf, heatmap_overlay

        frames = _frames(frames)
        B, H, W, _ = frames.shape
        for name, i in (("target_frame", target_frame), ("reference_frame", reference_frame)):
            if not 0 <= i < B:
                raise InputError(f"{name} {i} does not exist: there are {B} frames (0..{B - 1})")
        target = _frame_mask(target_mask, target_frame, B, (H, W), "target_mask") > 0.5
        if not bool(target.any()):
            raise InputError(f"the target mask is empty on frame {target_frame}: the object must be visible there")
        _Progress(1).check()
        outline = None
        if reference_mask is not None:
            outline = (_frame_mask(reference_mask, reference_frame, B, (H, W), "reference_mask") > 0.5).numpy()
        result = compute_cycle_erf(
            model.ready(),
            ref_frame=frames[reference_frame],
            target_frame=frames[target_frame],
            target_mask=target.numpy(),
            size=int(size),
            config=CycleERFConfig(steps=int(steps), rate=model.gc_rate),
            device=model.device,
            precision=model.precision,
            scale=float(scale) or None,
        )
        heat = heatmap_overlay(to_uint8(frames[reference_frame]), result.map, outline, result.scale)
        return (torch.from_numpy(result.map).float()[None], torch.from_numpy(heat).float().div_(255)[None], result.peak)
