"""The whole job behind ``cyclevos segment``: stream a video through the engine and write one palette
PNG per frame into a folder that appears under its final name only once every frame is written."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import InferenceConfig
from .cycle.confidence import suggest_keyframes, write_report
from .errors import InputError
from .inference.engine import InferenceCore, propagate_both_ways
from .inference.objects import check_mask
from .inference.video_adaptation import VideoAdaptation, network_for_video
from .media.edges import EdgeConfig, refine_ids
from .media.frames import FrameSource
from .media.output_dir import DONE_FILE, OutputFolder, check_output_file, clean_stale_partials, partial_name
from .media.writers import MaskVideoWriter, OverlayVideoWriter, output_error, write_palette_png
from .model.network import CycleVOSNet
from .runtime.precision import Precision

__all__ = ["DONE_FILE", "RunStats", "check_output_dir", "check_outputs", "segment_video", "segment_frames"]


@dataclass
class RunStats:
    frames: int
    objects: list[int]
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


def check_output_dir(out: Path, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse to replace anything but an empty folder or a finished cyclevos output, a folder that is or
    holds an input, and one that cannot be created."""
    OutputFolder(out, inputs)


def check_outputs(
    out: Path,
    inputs: Iterable[str | os.PathLike] = (),
    *,
    overlay_path: str | os.PathLike | None = None,
    mask_video_path: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
) -> OutputFolder:
    """Every output location checked before a run: the folder (see ``OutputFolder``) and each file (not an
    input, not inside the folder, not one of the others, not a file cyclevos did not write, writable)."""
    inputs = [i for i in inputs if i is not None]
    folder = OutputFolder(out, inputs)
    files = {"--overlay": overlay_path, "--mask-video": mask_video_path, "--report": report}
    if report is not None:
        files["--report's plot"] = Path(report).with_suffix(".png")
    seen: dict[Path, str] = {}
    for what, path in files.items():
        if path is None:
            continue
        real = Path(os.path.realpath(os.path.abspath(path)))
        if real in seen:
            raise InputError(f"{what} and {seen[real]} are the same file {path}: give each its own name")
        seen[real] = what
        if Path(os.path.realpath(folder.out)) in real.parents:
            raise InputError(f"{what} {path} is inside the output folder {out}: write it beside the folder")
        check_output_file(path, inputs, what)
    return folder


def check_keyframes(
    keyframes: dict[int, np.ndarray], frame_size: tuple[int, int], frames: int | None = None
) -> list[int]:
    """Check every keyframe's mask against the frame size (and the frame count when known); returns the
    object ids of the earliest one."""
    if not keyframes:
        raise InputError("no mask given: draw the objects on at least one frame (--mask FILE)")
    for index, mask in sorted(keyframes.items()):
        if frames is not None and not 0 <= index < frames:
            raise InputError(f"a mask is given for frame {index} but the video has {frames} frames (0..{frames - 1})")
        check_mask(mask, frame_size, "the mask" if len(keyframes) == 1 else f"the mask of frame {index}")
    return check_mask(keyframes[min(keyframes)], frame_size)


@dataclass
class SegmentedFrames:
    """``segment_frames``' result: every frame's ids, the object ids, the cycle scores by frame."""

    ids: torch.Tensor  # (B, H, W) uint8
    object_ids: list[int]
    scores: dict[int, dict[int, float]]
    adaptation: VideoAdaptation | None = None  # with InferenceConfig.adapt on


def segment_frames(
    net: CycleVOSNet,
    frames,
    keyframes: dict[int, np.ndarray],
    *,
    config: InferenceConfig | None = None,
    device: torch.device | None = None,
    precision: Precision | None = None,
    progress: Callable[[int, int, Any, np.ndarray], None] | None = None,
    adapt_progress: Callable[[int, int], None] | None = None,
) -> SegmentedFrames:
    """Segment a video from the ids drawn on ``keyframes`` (forward from the earliest, then backward; see
    ``propagate_both_ways``). ``frames``: a (B, H, W, 3) float tensor in 0..1 or uint8 array held in
    memory, or a ``FrameSource`` streamed from its file (only the frames before the earliest keyframe are
    kept, for the backward pass). ``progress(done, t, frame, ids)`` is called after each frame with the
    count done, the frame's index, the frame as given and its (H, W) ids (e.g. for a preview); it may raise to stop.
    With ``config.adapt`` on, the network is first adapted to the frames (``inference.video_adaptation``),
    ``adapt_progress(step, steps)`` called before each step (it may raise to stop)."""
    config = config or InferenceConfig()
    if isinstance(frames, FrameSource):
        shape = (len(frames), *frames.size)

        def indexed():
            return ((i, f) for i, (_, f) in enumerate(frames))
    else:
        shape = tuple(frames.shape[:3])

        def indexed():
            return enumerate(frames)

    adaptation = None
    if config.adapt.enabled:
        adaptation = network_for_video(
            net, indexed, keyframes, config=config, device=device, precision=precision, progress=adapt_progress
        )
        net = adaptation.net
    out = torch.zeros(shape, dtype=torch.uint8)
    scores: dict[int, dict[int, float]] = {}

    def make_engine():
        return InferenceCore(net, config, device, precision)

    run = propagate_both_ways(make_engine, indexed(), keyframes)
    for done, (t, frame, labels, frame_scores) in enumerate(run, 1):
        out[t] = torch.from_numpy(labels)
        if frame_scores:
            scores[t] = frame_scores
        if progress is not None:
            progress(done, t, frame, labels)
    object_ids = sorted({int(i) for ids in keyframes.values() for i in np.unique(ids) if i != 0})
    return SegmentedFrames(out, object_ids, scores, adaptation)


def segment_video(
    net: CycleVOSNet,
    source: FrameSource,
    keyframes: dict[int, np.ndarray],
    out_dir: str | os.PathLike,
    *,
    config: InferenceConfig | None = None,
    device: torch.device | None = None,
    overlay_path: str | os.PathLike | None = None,
    mask_video_path: str | os.PathLike | None = None,
    progress: Callable[[int], None] | None = None,
    adapt_progress: Callable[[int, int], None] | None = None,
    removals: dict[int, list[int]] | None = None,
    report: str | os.PathLike | None = None,
    edges: EdgeConfig | None = None,
    inputs: Iterable[str | os.PathLike] = (),
) -> RunStats:
    """Segment every frame of ``source`` from the ids drawn on one or more frames (``keyframes``: frame
    index -> (H, W) id map) into ``out_dir``: forward from the earliest keyframe (later ones replace the
    prediction of their objects), then backward from it to the start; ``removals`` ({frame: [ids]}) stop
    following objects from a frame on.

    The PNGs go to a hidden ``.OUT.<pid>-<random>.partial`` folder beside ``out_dir`` (this run's own),
    renamed to ``out_dir`` after the last frame with a ``cyclevos.json`` summary; an error or an
    interruption leaves only the partial folder. An existing ``out_dir`` is replaced only when it is a
    cyclevos output that no other run changed meanwhile (``media.output_dir.OutputFolder``). The videos
    and the report are written under hidden names and renamed into place with the folder; ``inputs``
    (e.g. the mask files) are, with ``source.path``, paths no output may take.
    ``report`` (a .csv path; needs ``config.confidence.enabled``) gets the cycle scores, a plot beside it,
    and the suggested keyframes go into the summary. ``edges`` refines each written id map (grow or shrink,
    fill holes, remove specks); it is post-processing: memory holds the engine's own masks. With
    ``config.adapt`` on, the network is first adapted to the video and guarded (``inference.video_adaptation``;
    ``adapt_progress(step, steps)`` before each step) and the summary records it.
    """
    out = Path(out_dir)
    config = config or InferenceConfig()
    if report is not None and not config.confidence.enabled:
        raise InputError("a report needs the cycle confidence: set InferenceConfig.confidence.enabled")
    objects = check_keyframes(keyframes, source.size)
    check_removals(keyframes, removals)
    start = min(keyframes)
    if (overlay_path or mask_video_path) and start:
        raise InputError("--overlay and --mask-video need a mask on the first frame (frame 0)")
    folder = check_outputs(
        out,
        [source.path, *inputs],
        overlay_path=overlay_path,
        mask_video_path=mask_video_path,
        report=report,
    )
    adaptation = None
    if config.adapt.enabled:  # after the outputs are checked: the video is read once more to adapt
        adaptation = network_for_video(
            net,
            lambda: ((i, f) for i, (_, f) in enumerate(source)),
            keyframes,
            config=config,
            device=device,
            removals=removals,
            progress=adapt_progress,
        )
        net = adaptation.net
    partial = folder.begin()
    written: list[str] = []
    scores: dict[int, dict[int, float]] = {}  # video frame index -> {object id: score}
    ov = OverlayVideoWriter(overlay_path, source.fps, source.size) if overlay_path else None
    mv = MaskVideoWriter(mask_video_path, source.fps, source.size) if mask_video_path else None
    videos = [w for w in (ov, mv) if w is not None]
    staged: list[tuple[Path, Path]] = []  # the report's (hidden name, final name), renamed after the folder
    t0 = time.perf_counter()
    try:
        indexed = (((i, stem), frame) for i, (stem, frame) in enumerate(source))
        for (index, stem), frame, ids, frame_scores in propagate_both_ways(
            lambda: InferenceCore(net, config, device), indexed, keyframes, removals
        ):
            if frame_scores:
                scores[index] = frame_scores
            if edges is not None and edges.changes_ids:
                ids = refine_ids(ids, edges)
            write_palette_png(partial / f"{stem}.png", ids)
            if ov is not None:
                ov.write(frame, ids)
            if mv is not None:
                mv.write(ids)
            written.append(f"{stem}.png")
            if progress is not None:
                progress(1)
        expected = len(source)
        if len(written) != expected:
            raise InputError(
                f"{source.path} yielded {len(written)} of its {expected} frames: the video is truncated or damaged; "
                "re-encode it"
            )
        for w in videos:
            w.finish()  # ffmpeg done and its exit status checked; renamed into place with the folder
        seconds = time.perf_counter() - t0
        frames = len(written)
        stats = RunStats(frames, objects, seconds)
        summary = {
            "input": str(source.path),
            "frames": frames,
            "objects": objects,
            "seconds": round(seconds, 3),
            "fps": round(stats.fps, 3),
            "keyframes": sorted(keyframes),
            "mask_frame": start,
            "removals": {str(k): v for k, v in sorted((removals or {}).items())},
            "config": asdict(config),
            "edges": asdict(edges or EdgeConfig()),
            "model": net.config.to_dict(),
            "files": sorted(written),
        }
        if adaptation is not None:
            summary["adaptation"] = adaptation.summary()
        if config.confidence.enabled:
            summary["suggested_keyframes"] = suggest_keyframes(scores, frames=frames)
            summary["scored_frames"] = len(scores)
        if report is not None:
            clean_stale_partials(report)
            tmp = partial_name(report, ".csv")
            try:
                plot = write_report(tmp, scores, summary["suggested_keyframes"], frames, mark=True)
            except OSError as e:
                staged += [(tmp, Path(report)), (tmp.with_suffix(".png"), Path(report).with_suffix(".png"))]
                raise output_error(e, report) from None
            staged += [(tmp, Path(report)), (plot, Path(report).with_suffix(".png"))]
            summary["report"] = str(report)
        try:
            (partial / DONE_FILE).write_text(json.dumps(summary, indent=2))
        except OSError as e:
            raise output_error(e, partial / DONE_FILE) from None
        folder.publish()
    except BaseException:
        for w in videos:
            w.abort()
        for path, _ in staged:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    try:
        for w in videos:
            w.commit()
        for path, final in staged:
            os.replace(path, final)
    except OSError as e:
        raise output_error(e, out) from None
    return stats


def check_removals(keyframes: dict[int, np.ndarray], removals: dict[int, list[int]] | None) -> None:
    """Every removal must name an object given on a keyframe at or before its frame, and still followed
    there (not removed before): checked before the run, so a typo never runs the video for nothing."""
    followed: set[int] = set()
    events = sorted({*keyframes, *(removals or {})})
    for frame in events:
        if frame in (removals or {}):
            unknown = sorted({int(i) for i in removals[frame]} - followed)
            if unknown:
                raise InputError(
                    f"--remove {frame}:{','.join(map(str, unknown))}: object(s) {unknown} are not followed on frame "
                    f"{frame} (followed there: {sorted(followed)}); remove only ids drawn on an earlier mask"
                )
            followed -= {int(i) for i in removals[frame]}
        if frame in keyframes:
            followed |= {int(i) for i in np.unique(keyframes[frame]) if i != 0}


def segment_davis(
    net: CycleVOSNet,
    data: str | os.PathLike,
    names: list[str],
    out_root: str | os.PathLike,
    *,
    config: InferenceConfig | None = None,
    device: torch.device | None = None,
    log: Callable[[str], None] | None = None,
) -> RunStats:
    """Segment DAVIS-layout sequences from their first annotation into ``out_root/SEQ``; the returned
    stats add up the frames and seconds of all sequences."""
    from .media.davis import sequence_paths
    from .media.frames import open_frames
    from .media.masks import read_mask

    total = RunStats(0, [], 0.0)
    for name in names:
        frame_paths, annotations = sequence_paths(data, name)
        if not annotations:
            raise InputError(f"sequence {name} has no annotation: the first frame's mask is needed")
        stats = segment_video(
            net,
            open_frames(frame_paths[0].parent),
            {0: read_mask(annotations[0])},
            Path(out_root) / name,
            config=config,
            device=device,
        )
        if log is not None:
            log(f"{name}: {stats.frames} frames, {stats.fps:.2f} frames/s")
        total.frames += stats.frames
        total.seconds += stats.seconds
    return total
