"""Results out: an overlay preview and the masks saved to ComfyUI's output folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..comfyui_cyclevos.errors import InputError
from ..comfyui_cyclevos.media.frames import to_uint8
from .common import (
    _FRAMES_IN,
    CATEGORY,
    DEFAULT_FPS,
    _fit_to_frames,
    _folder_paths,
    _frames,
    _int,
    _mask_batch,
    _output_dir,
    _Progress,
    _resize_nearest,
)

MAX_NAME_BYTES = 200  # file systems take 255 bytes a name; the counter and the hidden partial name need the rest


class CycleVOSOverlay:
    DESCRIPTION = "The frames with each object tinted in its palette colour and outlined: a preview IMAGE batch."
    CATEGORY = CATEGORY
    FUNCTION = "draw"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames with the masks drawn over them.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": _FRAMES_IN,
                "alpha": (
                    "FLOAT",
                    {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Opacity of the tint."},
                ),
                "outline": _int(1, 0, 32, "Outline width in pixels (0 = none)."),
            },
            "optional": {
                "masks": (
                    "CYCLEVOS_MASKS",
                    {"tooltip": "Per-object result (each object in its own colour). Connect this OR mask."},
                ),
                "mask": ("MASK", {"tooltip": "Any MASK batch (drawn as one object). Connect this OR masks."}),
            },
        }

    def draw(self, frames, alpha=0.5, outline=1, masks=None, mask=None):
        from ..comfyui_cyclevos.media.overlay import overlay

        frames = _frames(frames)
        B, H, W, _ = frames.shape
        if (masks is None) == (mask is None):
            raise InputError("connect either masks (CYCLEVOS_MASKS) or mask (MASK) to CycleVOS Overlay")
        ids = masks.ids if masks is not None else (_mask_batch(mask) > 0.5).to(torch.uint8)
        if ids.shape[0] not in (1, B):
            raise InputError(f"{ids.shape[0]} masks for {B} frames: give one mask per frame")
        if tuple(ids.shape[-2:]) != (H, W):
            _fit_to_frames(tuple(ids.shape[-2:]), (H, W), "the masks")
            ids = _resize_nearest(ids, (H, W))
        progress = _Progress(B)
        out = torch.empty_like(frames)
        for t in range(B):
            progress.check()
            drawn = overlay(to_uint8(frames[t]), ids[t if ids.shape[0] > 1 else 0].numpy(), float(alpha), int(outline))
            out[t] = torch.from_numpy(drawn).float().div_(255)
            progress.update(t + 1)
        return (out,)


class CycleVOSSaveMasks:
    DESCRIPTION = (
        "Saves the masks in ComfyUI's output folder: a folder of palette PNGs (object ids as palette indices, "
        "DAVIS colours, one file per frame) and/or an mp4 of the masks in the same colours."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the masks went: the PNG folder (or the video when only the video is saved).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "cyclevos/masks",
                        "tooltip": "Name of the output, relative to ComfyUI's output folder; a counter is added (prefix_00001_).",
                    },
                ),
                "save_png": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Save a folder of palette PNGs, 00000.png, 00001.png, ..."},
                ),
                "save_video": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Save an mp4 of the masks in palette colours."},
                ),
                "fps": (
                    "FLOAT",
                    {
                        "default": DEFAULT_FPS,
                        "min": 0.1,
                        "max": 1000.0,
                        "step": 0.1,
                        "tooltip": "Frame rate of the mask video (connect Load Video's fps).",
                    },
                ),
            },
            "optional": {
                "masks": ("CYCLEVOS_MASKS", {"tooltip": "Per-object result of Propagate. Connect this OR mask."}),
                "mask": (
                    "MASK",
                    {"tooltip": "Any MASK batch, saved as one object (id 1 where > 0.5). Connect this OR masks."},
                ),
            },
        }

    def save(
        self, filename_prefix="cyclevos/masks", save_png=True, save_video=False, fps=DEFAULT_FPS, masks=None, mask=None
    ):
        from ..comfyui_cyclevos.media.writers import MaskVideoWriter, write_palette_png

        if (masks is None) == (mask is None):
            raise InputError("connect either masks (CYCLEVOS_MASKS) or mask (MASK) to CycleVOS Save Masks")
        if not (save_png or save_video):
            raise InputError("nothing to save: turn on save_png or save_video")
        ids = masks.ids if masks is not None else (_mask_batch(mask) > 0.5).to(torch.uint8)
        B, H, W = ids.shape
        folder, name, counter, subfolder = _save_target(filename_prefix, W, H)
        stem = f"{name}_{counter:05}_"
        progress = _Progress(B)
        ui_images = []
        png_dir = folder / stem
        partial = None  # this save's own hidden folder, renamed to png_dir when every frame is written
        writer = MaskVideoWriter(folder / f"{stem}.mp4", fps, (H, W)) if save_video else None
        try:
            if save_png:
                partial = Path(tempfile.mkdtemp(dir=folder, prefix=f".{stem}.{os.getpid()}-", suffix=".partial"))
            for t in range(B):
                progress.check()
                frame_ids = ids[t].numpy()
                if save_png:
                    write_palette_png(partial / f"{t:05d}.png", frame_ids)
                    ui_images.append(
                        {"filename": f"{t:05d}.png", "subfolder": _join(subfolder, stem), "type": "output"}
                    )
                if writer is not None:
                    writer.write(frame_ids)
                progress.update(t + 1)
            if writer is not None:
                writer.close()
            if save_png:
                os.rename(partial, png_dir)  # never over a folder another save finished meanwhile
        except BaseException:
            if writer is not None:
                writer.abort()
            if partial is not None:
                shutil.rmtree(partial, ignore_errors=True)
            raise
        if writer is not None:
            ui = {
                "images": [{"filename": f"{stem}.mp4", "subfolder": subfolder, "type": "output"}],
                "animated": (True,),
            }
        else:
            ui = {"images": ui_images}
        path = png_dir if save_png else folder / f"{stem}.mp4"
        return {"ui": ui, "result": (str(path),)}


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder}/{name}" if subfolder else name


def _save_target(prefix: str, width: int, height: int) -> tuple[Path, str, int, str]:
    """(folder, name, counter, subfolder) for a new output, as ComfyUI's SaveImage numbers its files."""
    for part in Path(prefix).parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise InputError(
                f"filename_prefix has a name of {len(os.fsencode(part))} bytes ({part[:20]}...): "
                f"keep each part of it under {MAX_NAME_BYTES} bytes"
            )
    fp = _folder_paths()
    if fp is not None:
        folder, name, counter, subfolder, _ = fp.get_save_image_path(prefix, fp.get_output_directory(), width, height)
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder), name, counter, subfolder
    out = _output_dir().resolve()
    rel = Path(os.path.normpath(prefix))
    folder = (out / rel.parent).resolve()
    if os.path.commonpath((out, folder)) != str(out):
        raise InputError(f"filename_prefix {prefix!r} points outside the output folder")
    folder.mkdir(parents=True, exist_ok=True)
    taken = [
        int(p.name[len(rel.name) + 1 :].split("_")[0])
        for p in folder.iterdir()
        if p.name.startswith(rel.name + "_") and p.name[len(rel.name) + 1 :].split("_")[0].isdigit()
    ]
    subfolder = "" if str(rel.parent) == "." else rel.parent.as_posix()
    return folder, rel.name, max(taken, default=0) + 1, subfolder
