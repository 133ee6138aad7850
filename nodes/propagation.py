"""Propagation of the objects through the video: the CycleVOS Propagate node."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..comfyui_cyclevos.config import ADAPT_DEFAULT_STEPS, AdaptConfig, CorrectionConfig, InferenceConfig, MemoryConfig
from ..comfyui_cyclevos.errors import InputError
from .common import (
    _MODEL_IN,
    _SIZE_IN,
    CATEGORY,
    DEFAULT_FPS,
    ObjectMasks,
    _fit_to_frames,
    _folder_paths,
    _frames,
    _int,
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
