"""The videos of a batch: read from a manifest CSV or found in a folder, split into shards, and whether
each one's output is already finished.

Manifest (a .csv, UTF-8): a header row naming the columns, then one row per keyframe::

    video,mask,frame,out
    shots/a.mp4,masks/a.png,0,a
    shots/a.mp4,masks/a-45.png,45,a
    shots/b.mp4,masks/b.png,,

``video`` (a video file or a folder of frames) and ``mask`` are required; ``frame`` (the frame the mask
is drawn on; empty: ``--mask-frame``) and ``out`` (the output folder under ``--out``; empty: the video's
stem) are optional. Rows of the same video add keyframes. Relative paths are relative to the manifest's
folder. Blank lines and lines starting with ``#`` are skipped.

Folder: every video file directly in the folder (sorted by name), each with a palette PNG mask of its
first frame named after it, ``<stem>.png`` beside it or else ``masks/<stem>.png``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..media.frames import VIDEO_EXTENSIONS
from ..runner import DONE_FILE

MANIFEST_COLUMNS = ("video", "mask", "frame", "out")
MASK_FOLDER = "masks"


@dataclass(frozen=True)
class Job:
    """One video of a batch: its keyframe masks and its output folder. ``error``: a problem found while
    listing it (e.g. no mask beside it); such a job fails without running, the others go on."""

    name: str  # the video as the summary shows it
    video: Path
    keyframes: dict[int, Path] = field(default_factory=dict)
    out: Path = Path()
    error: str | None = None


@dataclass(frozen=True)
class Shot:
    """A video of a folder and its mask (None when there is none)."""

    name: str
    video: Path
    mask: Path | None


def is_finished(out: str | os.PathLike) -> bool:
    """A finished output: the folder exists with the summary ``segment_video`` writes last."""
    return (Path(out) / DONE_FILE).is_file()


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N) with 1 <= K <= N."""
    head, sep, tail = text.partition("/")
    if not (sep and head.strip().isdigit() and tail.strip().isdigit()):
        raise InputError(f"--shard {text!r} is not K/N (e.g. 2/8: the second of eight parts)")
    k, n = int(head), int(tail)
    if not 1 <= k <= n:
        raise InputError(f"--shard {text!r}: K must be between 1 and N (e.g. 1/{max(n, 1)} .. {max(n, 1)}/{max(n, 1)})")
    return k, n


def shard(jobs: list[Job], k: int, n: int) -> list[Job]:
    """The K-th of N disjoint parts (1-based): the i-th job of the list (0-based) goes to part i mod N + 1,
    so every job is in exactly one part, and a part does not change when another part's jobs finish."""
    return jobs[k - 1 :: n]


def list_shots(folder: str | os.PathLike) -> list[Shot]:
    """The videos directly in ``folder``, sorted by name, with the mask of the same stem beside each
    (``a.mp4`` -> ``a.png``) or else in ``masks/``."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise InputError(f"{d} is not a folder: give a folder of videos (with their masks) or a manifest .csv")
    videos = sorted(
        p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")
    )
    if not videos:
        raise InputError(f"{d} holds no video files: put the videos directly in it (mp4, mov, webm, mkv, ...)")
    stems: dict[str, Path] = {}
    for v in videos:
        if v.stem in stems:
            raise InputError(f"{stems[v.stem].name} and {v.name} share the name {v.stem!r}: rename one")
        stems[v.stem] = v
    shots = []
    for v in videos:
        mask = next((m for m in (d / f"{v.stem}.png", d / MASK_FOLDER / f"{v.stem}.png") if m.is_file()), None)
        shots.append(Shot(v.name, v, mask))
    return shots


def scan_folder(folder: str | os.PathLike, out_root: str | os.PathLike, *, mask_frame: int = 0) -> list[Job]:
    """A job per video of ``folder`` (see ``list_shots``) into ``out_root/<stem>``; a video without a mask
    becomes a job that fails (recorded in the summary) rather than stopping the batch."""
    out = Path(out_root)
    jobs = []
    for s in list_shots(folder):
        error = None
        if s.mask is None:
            error = f"no mask for {s.name}: put {s.video.stem}.png beside it or in {MASK_FOLDER}/"
        keyframes = {} if s.mask is None else {mask_frame: s.mask.resolve()}
        jobs.append(Job(s.name, s.video.resolve(), keyframes, (out / s.video.stem).absolute(), error))
    return jobs


def read_manifest(path: str | os.PathLike, out_root: str | os.PathLike, *, mask_frame: int = 0) -> list[Job]:
    """The jobs of a manifest CSV (see the module's docstring), in the order their videos first appear.
    Every problem is an InputError of one line naming the manifest's row (its line number)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"manifest {p} does not exist: give a .csv file (video,mask[,frame][,out]) or a folder")
    base, out = p.absolute().parent, Path(out_root)
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read manifest {p} ({e}): save it as a UTF-8 .csv") from None
    rows = [(n, [c.strip() for c in r]) for n, r in rows if not r[0].lstrip().startswith("#")]
    usage = "the columns are video,mask[,frame][,out]"
    if not rows:
        raise InputError(f"{p.name} is empty: give a header row ({usage}) and a row per video")
    line, header = rows[0]
    header = [c.lower() for c in header]
    for c in header:
        if c not in MANIFEST_COLUMNS:
            raise InputError(f"{p.name} row {line}: unknown column {c!r} in the header: {usage}")
        if header.count(c) > 1:
            raise InputError(f"{p.name} row {line}: the column {c!r} is named twice: {usage}")
    for c in ("video", "mask"):
        if c not in header:
            raise InputError(f"{p.name} row {line}: the header has no {c!r} column: {usage}")

    found: dict[Path, dict] = {}  # video -> {"row", "name", "keyframes", "rows", "out"}
    outs: dict[Path, int] = {}
    for line, cells in rows[1:]:
        where = f"{p.name} row {line}"
        if len(cells) != len(header):
            raise InputError(
                f"{where}: {len(cells)} cells where the header has {len(header)} ({','.join(header)}): "
                "quote a path that holds a comma"
            )
        row = dict(zip(header, cells))
        if not row["video"] or not row["mask"]:
            raise InputError(f"{where}: the {'video' if not row['video'] else 'mask'} cell is empty")
        video = (base / row["video"]).expanduser()
        if not video.exists():
            raise InputError(f"{where}: video {row['video']} not found (looked for {video})")
        mask = (base / row["mask"]).expanduser()
        if not mask.is_file():
            raise InputError(f"{where}: mask {row['mask']} not found (looked for {mask})")
        frame = mask_frame
        if row.get("frame"):
            if not row["frame"].isdigit():
                raise InputError(f"{where}: frame {row['frame']!r} is not a frame index (0, 1, ...)")
            frame = int(row["frame"])
        target = (out / (row.get("out") or video.stem)).absolute()
        video = video.resolve()
        entry = found.get(video)
        if entry is None:
            if target in outs:
                raise InputError(
                    f"{where}: rows {outs[target]} and {line} both write to {target}: give one another out"
                )
            outs[target] = line
            found[video] = {"name": row["video"], "keyframes": {frame: mask.resolve()}, "rows": {frame: line}}
            found[video]["out"] = target
            continue
        if row.get("out") and target != entry["out"]:
            raise InputError(f"{where}: {row['video']} goes to {entry['out']} on an earlier row, not {target}")
        if frame in entry["keyframes"]:
            raise InputError(
                f"{where}: a second mask for frame {frame} of {row['video']} (row {entry['rows'][frame]}): "
                "give one mask per frame"
            )
        entry["keyframes"][frame] = mask.resolve()
        entry["rows"][frame] = line
    if not found:
        raise InputError(f"{p.name} has a header but no rows: add a row per video ({usage})")
    return [Job(e["name"], v, dict(sorted(e["keyframes"].items())), e["out"]) for v, e in found.items()]
