"""Video in: a video file from ComfyUI's input folder decoded into an IMAGE batch, with a memory check; or
the i-th shot of a folder with its mask, to walk a folder with ComfyUI's queue."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..comfyui_cyclevos.errors import InputError
from .common import CATEGORY, DEFAULT_FPS, VIDEO_EXTENSIONS, _folder_paths, _input_dir, _int, _Progress


def list_videos() -> list[str]:
    d = _input_dir()
    if not d.is_dir():
        return []
    return sorted(
        p.name
        for p in d.iterdir()
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")
    )


def resolve_video(name: str) -> Path:
    """A name from the input folder (ComfyUI's 'name [input]' / '[output]' / '[temp]' annotations
    allowed); outside ComfyUI a path relative to the working folder, or absolute."""
    fp = _folder_paths()
    if fp is None:
        return Path(name).expanduser().resolve()
    rel, base = fp.annotated_filepath(name)
    base = os.path.abspath(base or fp.get_input_directory())
    full = os.path.abspath(os.path.join(base, rel))
    if os.path.commonpath((base, full)) != base:
        raise InputError(f"video {name!r} is outside ComfyUI's folders: put it in the input folder")
    return Path(full)


def file_fingerprint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """size + mtime + sha256 of the first and last MiB: cheap even for a large video, and it changes
    when the file is replaced or edited."""
    st = os.stat(path)
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if st.st_size > chunk:
            f.seek(max(chunk, st.st_size - chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


class CycleVOSLoadVideo:
    DESCRIPTION = (
        "Loads a video from ComfyUI's input folder as an IMAGE batch (float32, B x H x W x 3: "
        "12 bytes a pixel, so a long or large video needs a lot of memory; use the frame cap, skip, "
        "every-nth and max side options to bound it). Also gives the frame rate and the frame count."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")
    OUTPUT_TOOLTIPS = (
        "The frames kept, as an IMAGE batch.",
        "Frames per second of the video divided by every_nth (24 when unknown).",
        "Number of frames in the batch.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video": (
                    list_videos(),
                    {
                        "video_upload": True,
                        "tooltip": "A video file in ComfyUI's input folder (mp4, mov, webm, mkv, avi, gif...); upload one with the button.",
                    },
                ),
                **_frame_options(),
            }
        }

    @classmethod
    def IS_CHANGED(cls, video, **kwargs):
        try:
            return file_fingerprint(resolve_video(video))
        except (OSError, InputError):
            return f"missing:{video}"

    @classmethod
    def VALIDATE_INPUTS(cls, video):
        try:
            path = resolve_video(video)
        except InputError as e:
            return str(e)
        if not path.is_file():
            return f"video file not found: {video} (looked for {path})"
        return True

    def load(self, video, max_frames=0, skip_first=0, every_nth=1, max_side=0):
        return _read_video(resolve_video(video), max_frames, skip_first, every_nth, max_side)


def _read_video(path: Path, max_frames: int, skip_first: int, every_nth: int, max_side: int):
    """(IMAGE batch, fps, frame count) of a video, with ComfyUI's progress bar and cancel check."""
    from ..comfyui_cyclevos.media.frames import open_frames

    source = open_frames(
        path,
        max_frames=max_frames or None,
        skip_first=skip_first,
        every_nth=every_nth,
        max_side=max_side or None,
    )
    progress = _Progress(len(source))

    def on_frame(done: int) -> None:
        progress.check()
        progress.update(done)

    out = torch.from_numpy(source.read_all(on_frame))  # (B, H, W, 3) float32 in 0..1
    fps = float(source.fps or DEFAULT_FPS) / every_nth
    return (out, fps, int(out.shape[0]))


def _frame_options() -> dict:
    return {
        "max_frames": _int(0, 0, 1_000_000, "Keep at most this many frames (0 = all)."),
        "skip_first": _int(0, 0, 1_000_000, "Skip this many frames at the start."),
        "every_nth": _int(1, 1, 1000, "Keep every n-th frame (1 = all): fewer frames, less memory and time."),
        "max_side": _int(
            0, 0, 8192, "Downscale so the longer side is at most this many pixels (0 = keep the size).", 8
        ),
    }


def resolve_folder(name: str) -> Path:
    """A folder under ComfyUI's input folder (outside ComfyUI: under the working folder); refuses one
    that leads outside it (``..``, an absolute path, a link)."""
    base = os.path.realpath(_input_dir())
    full = os.path.realpath(os.path.join(base, name.strip() or "."))
    if os.path.commonpath((base, full)) != base:
        raise InputError(f"folder {name!r} is outside ComfyUI's input folder: put the shots in a folder inside it")
    return Path(full)


def _shot(folder: str, index: int):
    """(the folder's shots, the one at ``index``) or a one-line error."""
    from ..comfyui_cyclevos.batch.jobs import list_shots

    shots = list_shots(resolve_folder(folder))
    if not 0 <= index < len(shots):
        raise InputError(
            f"index {index}: the folder {folder!r} has {len(shots)} shots (0..{len(shots) - 1}): "
            f"queue {len(shots)} prompts from index 0"
        )
    shot = shots[index]
    if shot.mask is None:
        raise InputError(f"no mask for {shot.name}: put {shot.video.stem}.png beside it or in masks/")
    return shots, shot


class CycleVOSLoadVideoFromFolder:
    DESCRIPTION = (
        "Loads the index-th video (sorted by name) of a folder in ComfyUI's input folder, with its mask: "
        "<stem>.png beside it or in masks/. The index goes up by one after each queued prompt, so Queue (N) "
        "segments N shots one after another; wire filename_prefix into Save Masks to name each output after its shot."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "MASK", "STRING", "STRING", "FLOAT", "INT", "INT")
    RETURN_NAMES = ("frames", "mask", "name", "filename_prefix", "fps", "frame_count", "shot_count")
    OUTPUT_TOOLTIPS = (
        "The shot's frames, as an IMAGE batch.",
        "The shot's mask of its first frame, one mask per object (ids in order: 1, 2, ...), for First Frame Mask.",
        "The shot's name: the video's file name without its extension.",
        "cyclevos/<folder>/<name>, for Save Masks' filename_prefix.",
        "Frames per second of the video divided by every_nth (24 when unknown).",
        "Number of frames in the batch.",
        "Number of videos in the folder: queue this many prompts from index 0.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": (
                    "STRING",
                    {
                        "default": "shots",
                        "tooltip": "A folder inside ComfyUI's input folder holding the videos, each with a mask "
                        "of its first frame named after it (a.mp4 -> a.png beside it or in masks/).",
                    },
                ),
                "index": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 1_000_000,
                        "step": 1,
                        "control_after_generate": True,
                        "tooltip": "Which video of the folder (0 = the first by name); set to increment, each "
                        "queued prompt takes the next one.",
                    },
                ),
                **_frame_options(),
            }
        }

    @classmethod
    def IS_CHANGED(cls, folder, index, **kwargs):
        try:
            _, shot = _shot(folder, index)
            return file_fingerprint(shot.video) + file_fingerprint(shot.mask)
        except (OSError, InputError):
            return f"missing:{folder}:{index}"

    @classmethod
    def VALIDATE_INPUTS(cls, folder):
        try:
            path = resolve_folder(folder)
        except InputError as e:
            return str(e)
        if not path.is_dir():
            return f"folder not found: {folder} (looked for {path})"
        return True

    def load(self, folder, index, max_frames=0, skip_first=0, every_nth=1, max_side=0):
        import numpy as np

        from ..comfyui_cyclevos.media.masks import read_mask

        shots, shot = _shot(folder, index)
        ids = read_mask(shot.mask)
        objects = [int(i) for i in np.unique(ids) if i]
        if not objects:
            raise InputError(f"the mask {shot.mask.name} has no object: draw the objects of {shot.name}'s first frame")
        mask = torch.from_numpy(np.stack([ids == i for i in objects])).float()
        frames, fps, count = _read_video(shot.video, max_frames, skip_first, every_nth, max_side)
        prefix = "/".join(["cyclevos", *Path(folder.strip()).parts, shot.video.stem])
        return (frames, mask, shot.video.stem, prefix, fps, count, len(shots))
