"""Propagation through the video, its cycle confidence, gradient correction and cycle-ERF."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ..comfyui_cyclevos.config import ADAPT_DEFAULT_STEPS, AdaptConfig, CorrectionConfig, InferenceConfig, MemoryConfig
from ..comfyui_cyclevos.errors import InputError
from ..comfyui_cyclevos.media.frames import to_uint8
from .common import (
    _FRAMES_IN,
    _MODEL_IN,
    _SIZE_IN,
    CATEGORY,
    DEFAULT_FPS,
    ObjectMasks,
    _fit_to_frames,
    _folder_paths,
    _frame_mask,
    _frames,
    _int,
    _mask_batch,
    _Progress,
    _resize_nearest,
    _show_preview,
    _video_frames,
)


class CycleVOSPropagate:
    DESCRIPTION = (
        "Follows the objects through the frames with the cycle-consistent space-time memory network. "
        "The objects may be drawn on any frame: the run goes forward from that frame to the end, then "
        "backward from it to the first frame. With gradient correction on, every K-th frame's mask is "
        "refined against the drawn mask (paper Eq. 5). Time and memory per frame are bounded by the memory "
        "capacity, not by the video's length."
    )
    CATEGORY = CATEGORY
    FUNCTION = "propagate"
    RETURN_TYPES = ("MASK", "CYCLEVOS_MASKS")
    RETURN_NAMES = ("mask", "masks")
    OUTPUT_TOOLTIPS = (
        "All objects together, one MASK per frame (B, H, W) at the frames' size.",
        "Each frame's object ids, for Select Object, Overlay and Save Masks.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": _MODEL_IN,
                "objects": (
                    "CYCLEVOS_OBJECTS",
                    {
                        "tooltip": "The objects drawn on one or more frames, from CycleVOS First Frame Mask (and Keyframe nodes after it)."
                    },
                ),
                "mem_every": _int(MemoryConfig.every, 1, 1000, "Add every K-th frame to the memory (the paper's 5)."),
                "mem_capacity": _int(
                    MemoryConfig.capacity,
                    1,
                    1000,
                    "Most memory frames besides the drawn one (oldest dropped): bounds time and memory per frame.",
                ),
                "size": _SIZE_IN,
                "gradient_correction": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Refine every K-th frame's mask against the drawn mask (paper Eq. 5); about 2-5x slower on those frames.",
                    },
                ),
                "gc_every": _int(CorrectionConfig.every, 1, 1000, "Correct every K-th frame."),
                "gc_steps": _int(
                    CorrectionConfig.steps,
                    1,
                    200,
                    "N gradient steps per corrected frame (the rate is quoted at 10: fewer steps take larger ones).",
                ),
                "gc_rate": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 10000.0,
                        "step": 1.0,
                        "tooltip": "Step size alpha (0 = the checkpoint's measured rate, else 150; the loss is a per-pixel mean, hence large).",
                    },
                ),
            },
            "optional": {
                "frames": (
                    "IMAGE",
                    {
                        "tooltip": "The video's frames as an IMAGE batch (B, H, W, 3), e.g. from CycleVOS Load Video "
                        "or VHS Load Video. Connect this OR video."
                    },
                ),
                "video": (
                    "VIDEO",
                    {
                        "tooltip": "ComfyUI's VIDEO (core Load Video, Create Video): a video file is read frame by "
                        "frame, never held whole as an IMAGE batch. Connect this OR frames."
                    },
                ),
                "confidence": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Score every K-th frame's mask by the cycle check (paper Eq. 2): "
                        "read it with CycleVOS Confidence to see where tracking failed.",
                    },
                ),
                "preview": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Show the result in the node as a small animated overlay, "
                        "and the latest frame on the progress bar while it runs.",
                    },
                ),
                "adapt_steps": _int(
                    ADAPT_DEFAULT_STEPS,
                    0,
                    1000,
                    "Test-time adaptation: Adam steps of the cycle loss (Eq. 2-4) on this video's own frames before "
                    "propagating, with a guard against drift (0: off, the fastest).",
                ),
                "adapt_rate": (
                    "FLOAT",
                    {
                        "default": AdaptConfig.rate,
                        "min": 1e-7,
                        "max": 1e-2,
                        "step": 1e-5,
                        "round": False,
                        "tooltip": "Adam's learning rate for the adaptation.",
                    },
                ),
            },
        }

    def propagate(
        self,
        model,
        frames=None,
        objects=None,
        mem_every=MemoryConfig.every,
        mem_capacity=MemoryConfig.capacity,
        size=240,
        gradient_correction=True,
        gc_every=CorrectionConfig.every,
        gc_steps=CorrectionConfig.steps,
        gc_rate=0.0,
        video=None,
        confidence=None,
        preview=None,
        adapt_steps=None,
        adapt_rate=None,
    ):  # frames second: positional calls of old; optional inputs None: their widget's default
        if (frames is None) == (video is None):
            raise InputError(
                "connect either frames (IMAGE) or video (VIDEO) to CycleVOS Propagate"
                + (", not both" if video is not None else "")
            )
        temporary = None
        try:
            if video is not None:
                frames, temporary = _video_frames(video)
            else:
                frames = _frames(frames)
            config = InferenceConfig.from_options(
                size=size,
                precision=model.precision.name,
                gc=gradient_correction,
                gc_every=gc_every,
                gc_steps=gc_steps,
                gc_rate=gc_rate,
                mem_every=mem_every,
                mem_capacity=mem_capacity,
                adapt_steps=ADAPT_DEFAULT_STEPS if adapt_steps is None else adapt_steps,
                adapt_rate=AdaptConfig.rate if adapt_rate is None else adapt_rate,
                checkpoint_rate=model.gc_rate,
            )
            config = replace(  # on unless turned off
                config, confidence=replace(config.confidence, enabled=confidence is None or bool(confidence))
            )
            return self._propagate(model, frames, objects, config, preview=preview)
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)

    def _propagate(self, model, frames, objects, config: InferenceConfig, *, preview):
        B, (H, W) = len(frames), tuple(frames.shape[1:3]) if isinstance(frames, torch.Tensor) else frames.size
        keyframes = {}
        for t, drawn in sorted(objects.keyframes.items()):
            if not 0 <= t < B:
                raise InputError(f"the objects are drawn on frame {t} but there are {B} frames (0..{B - 1})")
            ids = torch.from_numpy(np.ascontiguousarray(drawn))
            if tuple(ids.shape) != (H, W):
                _fit_to_frames(tuple(ids.shape), (H, W), "the objects' mask")
                ids = _resize_nearest(ids, (H, W))
            keyframes[t] = ids.numpy()
        from ..comfyui_cyclevos.media.preview import OverlayPreview
        from ..comfyui_cyclevos.runner import segment_frames

        progress = _Progress(B)
        thumbnails = (
            OverlayPreview(B) if (preview is None or preview) and _folder_paths() is not None else None
        )  # on unless turned off

        def report(done, t, frame, ids):
            progress.check()
            shown = thumbnails is not None and thumbnails.add(t, frame, ids)
            progress.update(done, thumbnails.latest if shown else None)

        adapting = _Progress(config.adapt.steps)  # adaptation's own phase on the bar, before the frames'

        def adapt_report(step, steps):
            adapting.check()
            adapting.update(step)

        result = segment_frames(
            model.ready(),
            frames,
            keyframes,
            config=config,
            device=model.device,
            precision=model.precision,
            progress=report,
            adapt_progress=adapt_report,
        )
        masks = ObjectMasks(result.ids, result.object_ids, result.scores)
        outputs = ((masks.ids > 0).float(), masks)
        if thumbnails is None:  # outside ComfyUI, or preview off
            return outputs
        return {"ui": _show_preview(thumbnails, getattr(frames, "fps", None) or DEFAULT_FPS), "result": outputs}


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
