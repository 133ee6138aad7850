"""The objects to follow (first-frame mask, keyframes), and per-object masks out (select, refine edges)."""

from __future__ import annotations

import numpy as np
import torch

from ..comfyui_cyclevos.errors import InputError
from ..comfyui_cyclevos.media.frames import to_uint8
from .common import CATEGORY, ObjectMasks, Objects, _frames, _int, _mask_batch, _Progress, log


class CycleVOSFirstFrameMask:
    DESCRIPTION = (
        "The objects to follow, drawn on one frame: either a MASK batch with one object per mask "
        "(e.g. LoadImage's MASK after painting in the mask editor, or several masks batched), or an "
        "IMAGE whose colours are object ids (a DAVIS palette PNG, black = background, one object per colour)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("CYCLEVOS_OBJECTS", "MASK")
    RETURN_NAMES = ("objects", "mask")
    OUTPUT_TOOLTIPS = (
        "The object ids on that frame, for CycleVOS Propagate.",
        "All objects together as one MASK (for a preview).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frame_index": _int(
                    0,
                    0,
                    1_000_000,
                    "Index of the frame (in the loaded batch) the objects are drawn on; "
                    "propagation runs forward and backward from it.",
                ),
                "threshold": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "MASK values above this are object pixels.",
                    },
                ),
                "invert": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Invert the MASK first (LoadImage's mask is 1 - alpha: a cut-out with an "
                        "opaque object and a transparent background gives the background).",
                    },
                ),
            },
            "optional": {
                "mask": (
                    "MASK",
                    {"tooltip": "One object per mask in the batch (object ids 1, 2, ...). Connect this OR image."},
                ),
                "image": (
                    "IMAGE",
                    {"tooltip": "A picture of the mask whose colours are object ids. Connect this OR mask."},
                ),
            },
        }

    def make(self, frame_index=0, threshold=0.5, invert=False, mask=None, image=None):
        if (mask is None) == (image is None):
            raise InputError(
                "connect either a MASK (one object per mask) or an IMAGE of object colours to "
                "CycleVOS First Frame Mask" + (", not both" if mask is not None else "")
            )
        if mask is not None:
            ids = self._from_masks(_mask_batch(mask), threshold, invert)
        else:
            from ..comfyui_cyclevos.media.masks import ids_from_rgb

            ids = ids_from_rgb(to_uint8(_frames(image, "image")[0]))
        if not (ids > 0).any():
            raise InputError("the mask image has no object pixels (all black/background): colour the objects")
        objects = Objects({int(frame_index): ids})
        return (objects, torch.from_numpy(ids > 0).float()[None])

    @staticmethod
    def _from_masks(m: torch.Tensor, threshold: float, invert: bool) -> np.ndarray:
        if m.shape[-2:] == (64, 64) and not bool(m.any()):
            raise InputError(
                "the MASK is LoadImage's empty 64x64 placeholder: the image has no alpha channel, so "
                "LoadImage gives no mask. Paint the objects in the mask editor (right-click the image > "
                "Open in MaskEditor), or connect LoadImage's IMAGE output to 'image' to use colours as ids"
            )
        if invert:
            m = 1 - m
        if m.shape[0] > 255:
            raise InputError(f"{m.shape[0]} masks: at most 255 objects")
        value, index = m.max(0)
        ids = torch.where(value > threshold, index + 1, 0).to(torch.uint8).numpy()
        present = set(np.unique(ids).tolist())
        for k in range(m.shape[0]):
            if k + 1 not in present:
                state = "empty" if not bool((m[k] > threshold).any()) else "hidden under the other masks"
                raise InputError(
                    f"mask {k + 1} of {m.shape[0]} is {state}: each mask of the batch must hold one object "
                    f"(values above threshold {threshold})"
                )
        if len(present - {0}) and (ids > 0).mean() > 0.9:
            log.warning(
                "cyclevos: the objects cover %.0f%% of the frame; is the mask inverted?", 100 * (ids > 0).mean()
            )
        return ids


class CycleVOSKeyframe(CycleVOSFirstFrameMask):
    DESCRIPTION = (
        "A fix on a later frame: the objects drawn on this frame replace the prediction there (a new id adds an "
        "object) and go into memory. Chain after CycleVOS First Frame Mask or another Keyframe; the chain goes "
        "into CycleVOS Propagate. CycleVOS Confidence suggests the frames to fix first."
    )
    FUNCTION = "add"
    RETURN_TYPES = ("CYCLEVOS_OBJECTS", "MASK")
    OUTPUT_TOOLTIPS = (
        "The keyframes so far, for CycleVOS Propagate or the next Keyframe.",
        "This keyframe's objects together as one MASK (for a preview).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"] = {
            "objects": (
                "CYCLEVOS_OBJECTS",
                {"tooltip": "The keyframes so far (First Frame Mask or another Keyframe)."},
            ),
            **spec["required"],
        }
        spec["required"]["frame_index"] = _int(
            10, 0, 1_000_000, "Index of the frame (in the loaded batch) this fix is drawn on."
        )
        return spec

    def add(self, objects, frame_index=10, threshold=0.5, invert=False, mask=None, image=None):
        drawn, preview = self.make(frame_index, threshold, invert, mask, image)
        if int(frame_index) in objects.keyframes:
            raise InputError(f"frame {frame_index} already has a keyframe in this chain: use another frame_index")
        if drawn.ids.shape != objects.ids.shape:
            raise InputError(
                f"this keyframe's mask is {drawn.ids.shape[1]}x{drawn.ids.shape[0]} but the first one's is "
                f"{objects.ids.shape[1]}x{objects.ids.shape[0]}: draw every keyframe at one size"
            )
        return (Objects({**objects.keyframes, **drawn.keyframes}), preview)


class CycleVOSSelectObject:
    DESCRIPTION = "One object's MASK for every frame, by its id (1 for the first object drawn, 2 for the second, ...)."
    CATEGORY = CATEGORY
    FUNCTION = "select"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("That object's mask per frame (B, H, W).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "masks": ("CYCLEVOS_MASKS", {"tooltip": "The per-object result of CycleVOS Propagate."}),
                "object_id": _int(
                    1, 1, 255, "The object's id (its mask number, or its palette index in a colour mask)."
                ),
            }
        }

    def select(self, masks, object_id=1):
        if object_id not in masks.object_ids:
            raise InputError(f"object {object_id} is not among the objects {masks.object_ids}")
        return ((masks.ids == object_id).float(),)


class CycleVOSRefineEdges:
    DESCRIPTION = (
        "Edge controls per object on Propagate's masks: grow or shrink by pixels, fill holes, remove specks "
        "below an area, and feather the edge of the MASK output (inside the frame; core FeatherMask only "
        "feathers the image border). Objects never overlap: growing takes background only."
    )
    CATEGORY = CATEGORY
    FUNCTION = "refine"
    RETURN_TYPES = ("CYCLEVOS_MASKS", "MASK")
    RETURN_NAMES = ("masks", "mask")
    OUTPUT_TOOLTIPS = (
        "The refined object ids (for Select Object, Overlay, Save Masks).",
        "All objects together, feathered: (B, H, W) float in 0..1.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "masks": ("CYCLEVOS_MASKS", {"tooltip": "From CycleVOS Propagate."}),
                "grow": _int(0, -256, 256, "Pixels to grow each object by (negative: shrink)."),
                "fill_holes": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Fill background regions enclosed by an object."},
                ),
                "min_area": _int(
                    0, 0, 1_000_000, "Remove pieces of an object smaller than this many pixels (0: keep all)."
                ),
                "feather": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.5,
                        "tooltip": "Soft edge of the MASK output: Gaussian sigma in pixels (0: hard).",
                    },
                ),
            }
        }

    def refine(self, masks, grow=0, fill_holes=False, min_area=0, feather=0.0):
        from ..comfyui_cyclevos.media.edges import EdgeConfig, refine_ids, soft_mask

        cfg = EdgeConfig(int(grow), bool(fill_holes), int(min_area), float(feather))
        B = masks.ids.shape[0]
        progress = _Progress(B)
        ids = masks.ids.clone()
        soft = torch.zeros(ids.shape, dtype=torch.float32)
        for t in range(B):
            progress.check()
            if cfg.changes_ids:
                ids[t] = torch.from_numpy(refine_ids(ids[t].numpy(), cfg))
            soft[t] = soft_mask(ids[t].numpy(), None, cfg.feather)
            progress.update(t + 1)
        return (ObjectMasks(ids, list(masks.object_ids), dict(masks.scores)), soft)
