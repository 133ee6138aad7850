"""Scoring folders of predicted masks against ground truth with the semi-supervised DAVIS protocol.

Layout: ``PRED/SEQ/NNNNN.png`` against ``GT/SEQ/NNNNN.png``; GT may also be a DAVIS root holding
``Annotations/480p/SEQ`` or ``Annotations/SEQ``. Objects are the ids 1..N of the first ground-truth frame
(255 is void and counts as background, as in the official semi-supervised evaluation).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..media.davis import read_label_png
from .metrics import BOUND_TH, score_frame, statistics

VOID_ID = 255
OVERALL_ROW = "(overall)"
"""Sequence name of the global row in the per-sequence summary CSV."""


@dataclass
class SequenceResult:
    """Scores of one sequence; statistics are per object, then averaged over its objects."""

    name: str
    frames: list[str]
    j: np.ndarray
    """(objects, frames) J of every object in every frame, first and last frame included."""
    f: np.ndarray
    """(objects, frames) F, likewise."""
    j_stats: np.ndarray
    """(objects, 3) mean, recall, decay of J over the frames the protocol scores."""
    f_stats: np.ndarray
    """(objects, 3) likewise for F."""

    @property
    def n_objects(self) -> int:
        return int(self.j.shape[0])

    @property
    def j_frame(self) -> np.ndarray:
        """Per-frame J averaged over objects, for the per-frame CSV."""
        return self.j.mean(axis=0)

    @property
    def f_frame(self) -> np.ndarray:
        return self.f.mean(axis=0)

    @property
    def j_mean(self) -> float:
        return float(self.j_stats[:, 0].mean())

    @property
    def j_recall(self) -> float:
        return float(self.j_stats[:, 1].mean())

    @property
    def j_decay(self) -> float:
        return float(self.j_stats[:, 2].mean())

    @property
    def f_mean(self) -> float:
        return float(self.f_stats[:, 0].mean())

    @property
    def f_recall(self) -> float:
        return float(self.f_stats[:, 1].mean())

    @property
    def f_decay(self) -> float:
        return float(self.f_stats[:, 2].mean())

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0


@dataclass
class Evaluation:
    """All sequences, with global figures pooled over objects as the official evaluation does.

    The official code appends each object's statistics to one list and averages that list, so a sequence
    with three objects weighs three times; J&F is the mean of the global J and F means. With one object
    per sequence (DAVIS 2016) this is the mean over sequences.
    """

    sequences: list[SequenceResult] = field(default_factory=list)

    def _pooled(self, which: str, column: int) -> float:
        stats = [getattr(s, which)[:, column] for s in self.sequences]
        return float(np.mean(np.concatenate(stats))) if stats else float("nan")

    @property
    def j_mean(self) -> float:
        return self._pooled("j_stats", 0)

    @property
    def j_recall(self) -> float:
        return self._pooled("j_stats", 1)

    @property
    def j_decay(self) -> float:
        return self._pooled("j_stats", 2)

    @property
    def f_mean(self) -> float:
        return self._pooled("f_stats", 0)

    @property
    def f_recall(self) -> float:
        return self._pooled("f_stats", 1)

    @property
    def f_decay(self) -> float:
        return self._pooled("f_stats", 2)

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0


def gt_sequences_root(gt: str | Path) -> Path:
    """The folder holding one sub-folder per sequence: GT itself, or a DAVIS root's annotations."""
    gt = Path(gt)
    if not gt.is_dir():
        raise InputError(f"ground-truth folder {gt} does not exist")
    ann = gt / "Annotations"
    if ann.is_dir():
        return ann / "480p" if (ann / "480p").is_dir() else ann
    return gt


def list_sequences(pred: str | Path) -> list[str]:
    """Sequences with predictions: the sub-folders of PRED that hold PNGs."""
    pred = Path(pred)
    if not pred.is_dir():
        raise InputError(f"prediction folder {pred} does not exist")
    return sorted(p.name for p in pred.iterdir() if p.is_dir() and any(p.glob("*.png")))


def _read_pred(path: Path, seq: str, shape: tuple[int, ...], n_objects: int) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"sequence {seq!r}: prediction {path} is missing; give one PNG per ground-truth frame")
    labels = read_label_png(path)
    if labels.shape != shape:
        raise InputError(
            f"sequence {seq!r}: prediction {path} is {labels.shape[1]}x{labels.shape[0]}, "
            f"the ground truth is {shape[1]}x{shape[0]}"
        )
    top = int(labels.max()) if labels.size else 0
    if top > n_objects:
        raise InputError(
            f"sequence {seq!r}: prediction {path} has object id {top}, "
            f"but the first ground-truth frame has {n_objects} object(s)"
        )
    return labels


def evaluate_sequence(
    pred_dir: str | Path, gt_dir: str | Path, name: str | None = None, bound_th: float = BOUND_TH
) -> SequenceResult:
    """Score one sequence; every ground-truth frame needs a prediction of the same file name.

    Statistics leave out the first frame (it is given) and the last one, as the semi-supervised DAVIS
    protocol does; the per-frame arrays keep all frames.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    seq = name or gt_dir.name
    gt_paths = sorted(gt_dir.glob("*.png"))
    if not gt_paths:
        raise InputError(f"sequence {seq!r}: no ground-truth PNGs in {gt_dir}")
    if len(gt_paths) < 3:
        raise InputError(
            f"sequence {seq!r}: {len(gt_paths)} ground-truth frame(s); the protocol leaves out "
            "the first and last frame, so at least 3 are needed"
        )
    first = read_label_png(gt_paths[0])
    first = np.where(first == VOID_ID, 0, first)
    n_objects = int(first.max())
    if n_objects == 0:
        raise InputError(f"sequence {seq!r}: the first ground-truth frame {gt_paths[0]} has no object")
    j = np.empty((n_objects, len(gt_paths)))
    f = np.empty((n_objects, len(gt_paths)))
    for t, gt_path in enumerate(gt_paths):
        gt = first if t == 0 else read_label_png(gt_path)
        gt = np.where(gt == VOID_ID, 0, gt)
        pred = _read_pred(pred_dir / gt_path.name, seq, gt.shape, n_objects)
        j[:, t], f[:, t] = score_frame(gt, pred, n_objects, bound_th)
    j_stats = np.array([statistics(row[1:-1]) for row in j])
    f_stats = np.array([statistics(row[1:-1]) for row in f])
    return SequenceResult(seq, [p.stem for p in gt_paths], j, f, j_stats, f_stats)


def _as_names(sequences: str | Iterable[str] | None) -> list[str] | None:
    if sequences is None:
        return None
    if isinstance(sequences, str):
        sequences = sequences.split(",")
    names = [s.strip() for s in sequences if s.strip()]
    return names or None


def evaluate_folders(
    pred: str | Path, gt: str | Path, sequences: str | Iterable[str] | None = None, bound_th: float = BOUND_TH
) -> Evaluation:
    """Score the given sequences (default: every sequence folder in PRED) against GT."""
    pred = Path(pred)
    gt_root = gt_sequences_root(gt)
    names = _as_names(sequences)
    if names is None:
        names = list_sequences(pred)
        if not names:
            raise InputError(f"no sequence folders with PNGs in {pred}")
    result = Evaluation()
    for seq in names:
        if not (gt_root / seq).is_dir():
            raise InputError(f"sequence {seq!r} has no ground truth folder {gt_root / seq}")
        if not (pred / seq).is_dir():
            raise InputError(f"sequence {seq!r} has no prediction folder {pred / seq}")
        result.sequences.append(evaluate_sequence(pred / seq, gt_root / seq, seq, bound_th))
    return result


_COLUMNS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay", "J&F-Mean")


def _row(s: SequenceResult | Evaluation) -> tuple[float, ...]:
    return (s.j_mean, s.j_recall, s.j_decay, s.f_mean, s.f_recall, s.f_decay, s.jf_mean)


def format_table(ev: Evaluation) -> str:
    """Per-sequence table and the global row, three decimals as DAVIS reports them."""
    width = max([len("Sequence"), len(OVERALL_ROW)] + [len(s.name) for s in ev.sequences])
    head = f"{'Sequence':<{width}}  {'Obj':>3}  " + "  ".join(f"{c:>8}" for c in _COLUMNS)
    lines = [head, "-" * len(head)]
    for s in ev.sequences:
        lines.append(f"{s.name:<{width}}  {s.n_objects:>3}  " + "  ".join(f"{v:>8.3f}" for v in _row(s)))
    lines.append("-" * len(head))
    n_obj = sum(s.n_objects for s in ev.sequences)
    lines.append(f"{OVERALL_ROW:<{width}}  {n_obj:>3}  " + "  ".join(f"{v:>8.3f}" for v in _row(ev)))
    return "\n".join(lines)


def write_per_frame_csv(ev: Evaluation, path: str | Path) -> None:
    """``sequence,frame,J,F`` for every frame (objects averaged), floats in full precision (repr)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sequence", "frame", "J", "F"])
        for s in ev.sequences:
            for frame, jv, fv in zip(s.frames, s.j_frame, s.f_frame):
                w.writerow([s.name, frame, repr(float(jv)), repr(float(fv))])


def read_per_frame_csv(path: str | Path) -> list[tuple[str, str, float, float]]:
    """Rows of a ``sequence,frame,J,F`` file (ours or the official one), frame kept as text."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"sequence", "frame", "J", "F"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{path} lacks column(s) {', '.join(sorted(missing))}; expected sequence,frame,J,F")
        return [(r["sequence"], r["frame"], float(r["J"]), float(r["F"])) for r in reader]


def write_summary_csv(ev: Evaluation, path: str | Path) -> None:
    """One row per sequence plus a final ``(overall)`` row, full precision."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sequence", "objects", *_COLUMNS])
        for s in ev.sequences:
            w.writerow([s.name, s.n_objects, *(repr(float(v)) for v in _row(s))])
        w.writerow([OVERALL_ROW, sum(s.n_objects for s in ev.sequences), *(repr(float(v)) for v in _row(ev))])


def run_eval(
    pred: str | Path,
    gt: str | Path,
    sequences: str | Iterable[str] | None = None,
    per_frame_csv: str | Path | None = None,
    csv_path: str | Path | None = None,
    echo: Callable[[str], object] = print,
) -> Evaluation:
    """What ``cyclevos eval`` does: score, print the table and J, F, J&F, and write the CSVs asked for."""
    ev = evaluate_folders(pred, gt, sequences)
    echo(format_table(ev))
    echo(
        f"J {ev.j_mean:.3f}  F {ev.f_mean:.3f}  J&F {ev.jf_mean:.3f}  "
        f"({len(ev.sequences)} sequences, {sum(s.n_objects for s in ev.sequences)} objects)"
    )
    if per_frame_csv is not None:
        write_per_frame_csv(ev, per_frame_csv)
        echo(f"per-frame scores written to {per_frame_csv}")
    if csv_path is not None:
        write_summary_csv(ev, csv_path)
        echo(f"per-sequence scores written to {csv_path}")
    return ev
