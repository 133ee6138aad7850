"""A batch in one process: the network loaded once, each video through ``runner.segment_video`` (its
``.partial`` folder and one-line errors), finished outputs skipped, a failure recorded and the batch going
on, and the summary rewritten after every video."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import CycleVOSError, InputError
from ..media.edges import EdgeConfig
from ..runner import DONE_FILE
from .jobs import Job, is_finished

SUMMARY_COLUMNS = ("video", "status", "frames", "seconds", "fps", "objects", "error")

Engine = tuple  # (network, InferenceConfig, torch.device), as the command line's engine setup returns it


@dataclass(frozen=True)
class JobOptions:
    """What each video gets besides the engine, as ``cyclevos segment``'s options of the same names; the
    extra files go beside the video's output folder: ``<out>-overlay.mp4``, ``<out>-masks.mp4``,
    ``<out>-confidence.csv`` (with its plot ``.png``)."""

    overlay: bool = False
    mask_video: bool = False
    report: bool = False
    edges: EdgeConfig = field(default_factory=EdgeConfig)


@dataclass
class JobResult:
    """A row of the summary. Not written: ``worker``, the host:pid that ran it, and ``loads``, how many
    networks that process had loaded by then (Ray)."""

    video: str
    status: str  # done, skipped or failed
    frames: int = 0
    seconds: float = math.nan
    fps: float = math.nan
    objects: list[int] = field(default_factory=list)
    error: str = ""
    worker: str = ""
    loads: int = 0

    def row(self) -> list[str]:
        number = (lambda x: "" if math.isnan(x) else f"{x:.3f}") if self.status != "failed" else (lambda x: "")
        return [
            self.video,
            self.status,
            str(self.frames) if self.status != "failed" else "",
            number(self.seconds),
            number(self.fps),
            " ".join(map(str, self.objects)),
            self.error,
        ]


def _one_line(e: BaseException) -> str:
    if isinstance(e, CycleVOSError):
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines) or type(e).__name__


def side_file(out: Path, suffix: str) -> Path:
    """``OUT/a`` -> ``OUT/a-overlay.mp4``: a file beside a video's output folder."""
    return out.with_name(out.name + suffix)


def run_job(
    engine: Engine, job: Job, options: JobOptions, *, progress: Callable[[int, int], None] | None = None
) -> JobResult:
    """Segment one video into ``job.out`` with ``runner.segment_video``; raises its one-line errors.
    ``progress(done, total)`` after each frame."""
    from ..media.frames import open_frames
    from ..media.masks import read_mask
    from ..runner import check_keyframes, segment_video

    net, cfg, dev = engine
    if job.error:
        raise InputError(job.error)
    source = open_frames(job.video)
    keyframes = {frame: read_mask(path) for frame, path in sorted(job.keyframes.items())}
    check_keyframes(keyframes, source.size, len(source))
    if options.report:
        cfg = replace(cfg, confidence=replace(cfg.confidence, enabled=True))
    total, done = len(source), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    stats = segment_video(
        net,
        source,
        keyframes,
        job.out,
        config=cfg,
        device=dev,
        overlay_path=side_file(job.out, "-overlay.mp4") if options.overlay else None,
        mask_video_path=side_file(job.out, "-masks.mp4") if options.mask_video else None,
        progress=step,
        report=side_file(job.out, "-confidence.csv") if options.report else None,
        edges=options.edges,
    )
    return JobResult(job.name, "done", stats.frames, stats.seconds, stats.fps, list(stats.objects))


def attempt(
    engine: Engine, job: Job, options: JobOptions, *, progress: Callable[[int, int], None] | None = None
) -> JobResult:
    """``run_job``, with any error (but an interruption) turned into a failed result."""
    try:
        return run_job(engine, job, options, progress=progress)
    except Exception as e:  # isolated: a bad video must not stop the batch
        return failed(job, e)


def failed(job: Job, error: BaseException | str) -> JobResult:
    return JobResult(job.name, "failed", error=error if isinstance(error, str) else _one_line(error))


def skipped(job: Job) -> JobResult:
    """A finished output, with the numbers of its ``cyclevos.json``."""
    try:
        done = json.loads((job.out / DONE_FILE).read_text())
        return JobResult(
            job.name,
            "skipped",
            int(done.get("frames", 0)),
            float(done.get("seconds", math.nan)),
            float(done.get("fps", math.nan)),
            [int(i) for i in done.get("objects", [])],
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return JobResult(job.name, "skipped")


class Summary:
    """``batch.csv``: one row per video handled so far, in the list's order, rewritten whole (through a
    temporary file) after every video, so it is always complete up to the last video finished."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: dict[int, JobResult] = {}

    def add(self, index: int, result: JobResult) -> None:
        self.rows[index] = result
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(SUMMARY_COLUMNS)
            for i in sorted(self.rows):
                w.writerow(self.rows[i].row())
        os.replace(tmp, self.path)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows.values())


def split_finished(jobs: list[Job], summary: Summary, on_result: Callable[[JobResult], None] | None = None):
    """Record the jobs whose output is finished as skipped; returns the others as (index, job)."""
    todo = []
    for i, job in enumerate(jobs):
        if is_finished(job.out):
            r = skipped(job)
            summary.add(i, r)
            if on_result is not None:
                on_result(r)
        else:
            todo.append((i, job))
    return todo


def run_batch(
    jobs: list[Job],
    load_engine: Callable[[], Engine],
    *,
    options: JobOptions | None = None,
    summary: Summary,
    on_result: Callable[[JobResult], None] | None = None,
    on_frame: Callable[[Job, int, int], None] | None = None,
) -> Summary:
    """Run ``jobs`` in this process: ``load_engine()`` once (not at all when every output is finished),
    then each video in turn. ``on_result`` after each video, ``on_frame(job, done, total)`` after each frame."""
    options = options or JobOptions()
    todo = split_finished(jobs, summary, on_result)
    if not todo:
        return summary
    engine = load_engine()
    for i, job in todo:
        progress = None if on_frame is None else (lambda done, total, job=job: on_frame(job, done, total))
        r = attempt(engine, job, options, progress=progress)
        summary.add(i, r)
        if on_result is not None:
            on_result(r)
    return summary
