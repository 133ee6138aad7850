"""DAVIS metrics: a golden comparison with the official evaluation, and small hand-checked cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.evaluation.evaluate import (
    Evaluation,
    SequenceResult,
    evaluate_folders,
    format_table,
    read_per_frame_csv,
    run_eval,
    write_per_frame_csv,
)
from comfyui_cyclevos.evaluation.metrics import (
    boundary_map,
    boundary_tolerance,
    f_measure,
    jaccard,
    score_frame,
    statistics,
)
from comfyui_cyclevos.filters import dilate_disk, disk
from comfyui_cyclevos.media.davis import read_label_png

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV = SHARED_DATA / "davis2016" / "dev-480p"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (the repo must be checked out beside shared/)")
    return path


# --- golden: every row of the official per-frame scores -------------------------------------------


def test_golden_osvos_davis2016_every_frame() -> None:
    official = read_per_frame_csv(_need(DEV / "osvos-official-jf.csv"))
    pred, gt = _need(DEV / "osvos-binary"), _need(DEV / "Annotations" / "480p")
    sequences = sorted({row[0] for row in official})
    ev = evaluate_folders(pred, gt, sequences)
    ours = [
        (s.name, frame, float(j), float(f)) for s in ev.sequences for frame, j, f in zip(s.frames, s.j_frame, s.f_frame)
    ]
    assert [r[:2] for r in ours] == [r[:2] for r in official]
    dj = np.array([a[2] - b[2] for a, b in zip(ours, official)])
    df = np.array([a[3] - b[3] for a, b in zip(ours, official)])
    bad = [(o[0], o[1]) for o, x, y in zip(official, dj, df) if abs(x) > 1e-6 or abs(y) > 1e-6]
    assert not bad, f"{len(bad)} of {len(official)} rows differ, first: {bad[:5]}"
    assert len(ours) == 360


def test_golden_through_davis_root_layout() -> None:
    """GT given as a DAVIS root (Annotations/480p/SEQ) gives the same numbers as the sequence folder."""
    ev = evaluate_folders(_need(DEV / "osvos-binary"), DEV, "blackswan")
    official = [r for r in read_per_frame_csv(DEV / "osvos-official-jf.csv") if r[0] == "blackswan"]
    assert np.allclose(ev.sequences[0].j_frame, [r[2] for r in official], atol=1e-6, rtol=0)
    assert np.allclose(ev.sequences[0].f_frame, [r[3] for r in official], atol=1e-6, rtol=0)


# --- J ---------------------------------------------------------------------------------------------


def test_jaccard_known_masks() -> None:
    gt = np.zeros((4, 4), bool)
    gt[0:2, 0:2] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[1:3, 1:4] = True  # 6 pixels, 1 shared with gt
    assert jaccard(gt, pred) == pytest.approx(1 / 9)
    assert jaccard(gt, gt) == 1.0
    assert jaccard(gt, ~gt) == 0.0


def test_jaccard_empty_conventions() -> None:
    empty = np.zeros((5, 7), bool)
    full = np.ones((5, 7), bool)
    assert jaccard(empty, empty) == 1.0
    assert jaccard(empty, full) == 0.0
    assert jaccard(full, empty) == 0.0


# --- F ---------------------------------------------------------------------------------------------


def test_boundary_map_is_half_pixel_shifted() -> None:
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
    assert (boundary_map(m) == expected).all()
    # A full image has no boundary at the right and bottom borders, nor anywhere else.
    assert not boundary_map(np.ones((4, 5), bool)).any()


def test_disk_is_skimage_disk_not_cv2_ellipse() -> None:
    for r in range(0, 16):
        y, x = np.mgrid[-r : r + 1, -r : r + 1]
        assert (disk(r) == (x * x + y * y <= r * r)).all()
    # cv2's ellipse would round sqrt(63) = 7.94 up to a 17-pixel row here.
    assert disk(8)[7].sum() == 15 and disk(8)[8].sum() == 17


def test_dilation_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, w = rng.integers(1, 30, size=2)
        m = rng.random((h, w)) < 0.08
        r = int(rng.integers(0, 9))
        ref = np.zeros_like(m)
        for y, x in zip(*np.nonzero(m)):
            yy, xx = np.mgrid[0:h, 0:w]
            ref |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        assert (dilate_disk(m, r) == ref).all()


def test_tolerance() -> None:
    assert boundary_tolerance((480, 854)) == 8
    assert boundary_tolerance((100, 100)) == 2  # 0.008 * 141.4 = 1.13
    assert boundary_tolerance((480, 854), 3) == 3


def test_f_identical_and_empty_conventions() -> None:
    yy, xx = np.mgrid[0:60, 0:80]
    blob = (yy - 30) ** 2 + (xx - 35) ** 2 < 15**2
    empty = np.zeros_like(blob)
    assert f_measure(blob, blob) == 1.0
    assert f_measure(empty, empty) == 1.0
    assert f_measure(blob, empty) == 0.0  # prediction empty: P = 1, R = 0
    assert f_measure(empty, blob) == 0.0  # ground truth empty: P = 0, R = 1


def test_f_tolerance_and_value() -> None:
    gt = np.zeros((100, 100), bool)
    gt[20:60, 20:60] = True
    near = np.roll(gt, 2, axis=1)  # within the 2-pixel tolerance
    assert f_measure(gt, near) == 1.0
    far = np.roll(gt, 10, axis=1)
    # Reference by distances: a boundary pixel matches when one of the other set is within radius 2.
    gb, pb = boundary_map(gt), boundary_map(far)
    g_pts, p_pts = np.argwhere(gb), np.argwhere(pb)
    d2 = ((g_pts[:, None, :] - p_pts[None, :, :]) ** 2).sum(-1)
    recall = (d2.min(1) <= 4).mean()
    precision = (d2.min(0) <= 4).mean()
    expected = 2 * precision * recall / (precision + recall)
    assert 0 < expected < 1
    assert f_measure(gt, far) == pytest.approx(expected, abs=1e-12)


# --- statistics ------------------------------------------------------------------------------------


def test_statistics_mean_recall_decay() -> None:
    v = np.array([1, 1, 1, 1, 0, 0, 0, 0], float)
    mean, recall, decay = statistics(v)
    assert (mean, recall) == (0.5, 0.5)
    assert decay == 1.0  # bins [0:3] and [5:8]
    # Recall counts values strictly above 0.5.
    assert statistics(np.array([0.5, 0.5, 0.9]))[1] == pytest.approx(1 / 3)


def test_decay_bin_edges_round_half_up() -> None:
    # n = 7: edges 1, 2.5, 4, 5.5, 7 round to 1, 3, 4, 6, 7, so the first bin is frames 0..2.
    v = np.array([1, 0, 0, 0, 0, 0, 0], float)
    assert statistics(v)[2] == pytest.approx(1 / 3)
    assert statistics(np.array([0.7]))[2] == 0.0


# --- several objects, folders, CSV -------------------------------------------------------------------


def _save(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [255] * (256 * 3 - 12))
    im.save(path)


def _two_object_frames(n: int = 4) -> list[np.ndarray]:
    frames = []
    for t in range(n):
        a = np.zeros((24, 32), np.uint8)
        a[2:10, 2 + t : 12 + t] = 1
        a[14:22, 18:28] = 2
        frames.append(a)
    return frames


def test_score_frame_per_object() -> None:
    gt = _two_object_frames(1)[0]
    pred = np.where(gt == 2, 0, gt)  # object 2 not predicted
    j, f = score_frame(gt, pred, 2)
    assert list(j) == [1.0, 0.0] and list(f) == [1.0, 0.0]
    j, f = score_frame(np.zeros_like(gt), np.zeros_like(gt), 2)  # absent from both: a hit
    assert list(j) == [1.0, 1.0] and list(f) == [1.0, 1.0]


def test_multi_object_sequence_and_pooled_global(tmp_path: Path) -> None:
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    frames = _two_object_frames(5)
    for t, a in enumerate(frames):
        gt = a.copy()
        gt[0, :] = 255  # void: read as background
        _save(gt_root / "two" / f"{t:05d}.png", gt)
        _save(pred_root / "two" / f"{t:05d}.png", np.where(a == 2, 0, a))  # object 2 missed
        one = (a == 1).astype(np.uint8)
        _save(gt_root / "one" / f"{t:05d}.png", one)
        _save(pred_root / "one" / f"{t:05d}.png", one)
    ev = evaluate_folders(pred_root, gt_root)
    by = {s.name: s for s in ev.sequences}
    assert by["two"].n_objects == 2
    assert by["two"].j_mean == 0.5 and by["two"].f_mean == 0.5
    assert list(by["two"].j_frame) == [0.5] * 5
    assert by["one"].j_mean == 1.0
    # Global figures pool objects (official): (1 + 0 + 1) / 3, not the mean of sequences (0.75).
    assert ev.j_mean == pytest.approx(2 / 3)
    assert ev.jf_mean == pytest.approx(2 / 3)
    assert "(overall)" in format_table(ev)


def test_missing_prediction_is_a_clear_error(tmp_path: Path) -> None:
    for t, a in enumerate(_two_object_frames(4)):
        _save(tmp_path / "gt" / "seq" / f"{t:05d}.png", a)
        if t != 2:
            _save(tmp_path / "pred" / "seq" / f"{t:05d}.png", a)
    with pytest.raises(InputError, match=r"'seq'.*00002\.png"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_prediction_id_above_objects_is_refused(tmp_path: Path) -> None:
    for t, a in enumerate(_two_object_frames(3)):
        _save(tmp_path / "gt" / "s" / f"{t:05d}.png", a)
        _save(tmp_path / "pred" / "s" / f"{t:05d}.png", np.where(a == 2, 3, a))
    with pytest.raises(InputError, match="object id 3"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_label_png_formats(tmp_path: Path) -> None:
    m = np.zeros((6, 8), bool)
    m[1:4, 2:6] = True
    Image.fromarray(m).save(tmp_path / "bit.png")  # mode "1"
    Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(tmp_path / "grey.png")  # 0/255
    _save(tmp_path / "pal.png", m.astype(np.uint8) * 2)
    assert (read_label_png(tmp_path / "bit.png") == m).all()
    assert (read_label_png(tmp_path / "grey.png") == m).all()
    assert (read_label_png(tmp_path / "pal.png") == m * 2).all()


def test_per_frame_csv_round_trip(tmp_path: Path) -> None:
    j = np.array([[1 / 3, 0.1, 2 / 7], [1.0, 0.0, math.pi / 4]])
    f = np.array([[0.2, 1 / 9, 0.5], [0.25, 1 - 1e-12, 0.75]])
    s = SequenceResult(
        "seq-a",
        ["00000", "00001", "00002"],
        j,
        f,
        np.array([statistics(r[1:-1]) for r in j]),
        np.array([statistics(r[1:-1]) for r in f]),
    )
    ev = Evaluation([s])
    path = tmp_path / "pf.csv"
    write_per_frame_csv(ev, path)
    assert path.read_text().splitlines()[0] == "sequence,frame,J,F"
    rows = read_per_frame_csv(path)
    assert [r[:2] for r in rows] == [("seq-a", "00000"), ("seq-a", "00001"), ("seq-a", "00002")]
    assert [r[2] for r in rows] == list(j.mean(0))  # exact: repr round-trips floats
    assert [r[3] for r in rows] == list(f.mean(0))


def test_run_eval_prints_and_writes(tmp_path: Path) -> None:
    for t, a in enumerate(_two_object_frames(3)):
        _save(tmp_path / "gt" / "Annotations" / "s" / f"{t:05d}.png", a)
        _save(tmp_path / "pred" / "s" / f"{t:05d}.png", a)
    out: list[str] = []
    ev = run_eval(tmp_path / "pred", tmp_path / "gt", "s", tmp_path / "pf.csv", tmp_path / "sum.csv", out.append)
    assert ev.jf_mean == 1.0
    assert any("J&F 1.000" in line for line in out)
    assert len(read_per_frame_csv(tmp_path / "pf.csv")) == 3
    assert (tmp_path / "sum.csv").read_text().splitlines()[-1].startswith("(overall),2,1.0,")
