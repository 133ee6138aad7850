"""Cycle confidence (issue 14): scores, suggested keyframes, the report."""

import csv
import json

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from comfyui_cyclevos.cli import main
from comfyui_cyclevos.config import ConfidenceConfig, CorrectionConfig, InferenceConfig
from comfyui_cyclevos.cycle.confidence import (
    NONE_NEEDED,
    describe_suggestions,
    low_score_limit,
    plot_scores,
    reference_iou,
    suggest_keyframes,
)
from comfyui_cyclevos.demo import demo_clip
from comfyui_cyclevos.inference.engine import InferenceCore
from comfyui_cyclevos.media.frames import open_frames
from comfyui_cyclevos.media.masks import read_mask
from comfyui_cyclevos.model.checkpoint import default_weights_path, load_checkpoint


def test_the_score_tells_the_engine_s_mask_from_a_wrong_one():
    """Shipped weights on the demo clip: frame 5's written mask explains frame 0's drawn mask (Eq. 2)
    far better than the same mask moved off the bear."""
    net = load_checkpoint(default_weights_path())
    clip, mask_path = demo_clip()
    frames = [f for _, (_, f) in zip(range(6), open_frames(clip))]
    config = InferenceConfig(
        precision="fp32",
        correction=CorrectionConfig(enabled=False, every=5),
        confidence=ConfidenceConfig(enabled=True, reference="own"),
    )
    eng = InferenceCore(net, config)
    eng.step(frames[0], read_mask(mask_path))
    for t, f in enumerate(frames[1:], 1):
        probs = eng.step(f)
        assert (t % 5 == 0) == bool(eng.scores), t  # scored on the correction schedule only
    right = eng.scores[1]
    geo, group = eng.geometry, eng.objects.reference_groups()[0]
    x = geo.frame_in(frames[5], eng.device)
    with torch.no_grad():
        features = net.encode_frame(x)
    written = geo.masks_in(torch.from_numpy(eng.labels(probs) == 1)[None], eng.device)
    moved = torch.roll(written, shifts=(written.shape[-2] // 2, written.shape[-1] // 2), dims=(-2, -1))
    again = reference_iou(
        net, written, x, features, ref_x=group.reference.x, ref_features=group.reference.features, targets=group.targets
    )
    wrong = reference_iou(
        net, moved, x, features, ref_x=group.reference.x, ref_features=group.reference.features, targets=group.targets
    )
    assert abs(float(again[0]) - right) < 0.05
    assert right > 0.6 and float(wrong[0]) < right - 0.3, (right, float(wrong[0]))


def test_suggested_keyframes_are_low_and_spread():
    scores = {t: {1: 0.9, 2: 0.95} for t in range(0, 100, 5)}
    scores[40] = {1: 0.2, 2: 0.9}
    scores[45] = {1: 0.25, 2: 0.9}  # as low, but next to 40
    scores[80] = {1: 0.9, 2: 0.5}
    scores[10] = {1: 0.6, 2: 0.9}
    assert suggest_keyframes(scores, count=3, frames=100) == [10, 40, 80]
    assert suggest_keyframes({}, count=3) == []


def test_no_keyframe_is_suggested_when_every_score_is_high():
    """Issue 30: the demo clip's scores all lie in 0.92-0.96, and 5, 35 and 45 were still suggested."""
    rng = np.random.default_rng(0)
    scores = {t: {1: float(v)} for t, v in zip(range(5, 60, 5), rng.uniform(0.92, 0.96, 11))}
    scores[5], scores[35], scores[45] = {1: 0.92}, {1: 0.921}, {1: 0.925}  # the lowest of the high ones
    assert suggest_keyframes(scores, count=3, frames=60) == []
    assert describe_suggestions([]) == NONE_NEEDED == "none needed"
    assert low_score_limit(min(s.values()) for s in scores.values()) < 0.92


def test_the_frame_with_a_drop_is_the_one_suggested():
    rng = np.random.default_rng(1)
    scores = {t: {1: float(v), 2: 0.95} for t, v in zip(range(5, 60, 5), rng.uniform(0.92, 0.96, 11))}
    scores[30] = {1: 0.95, 2: 0.78}  # one object drifted on one frame: clearly below the rest, not below 0.5
    assert suggest_keyframes(scores, count=3, frames=60) == [30]
    assert describe_suggestions([30, 45]) == "30, 45"
    low = {t: {1: 0.3 + 0.01 * (t % 3)} for t in range(0, 60, 5)}  # all poor: low in absolute terms
    assert len(suggest_keyframes(low, count=3, frames=60)) == 3


def test_plot_draws_each_object():
    img = plot_scores({0: {1: 1.0, 2: 0.0}, 10: {1: 0.5, 2: 0.2}}, [10], 11)
    assert img.shape == (240, 640, 3) and img.dtype == np.uint8
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (228, 26, 28) in colours and (55, 126, 184) in colours and (200, 200, 200) in colours
    none = plot_scores({0: {1: 0.95}, 10: {1: 0.94}}, [], 11)
    some = plot_scores({0: {1: 0.95}, 10: {1: 0.94}}, [10], 11)
    caption = (slice(0, 13), slice(30, 250))  # "keyframes: none needed" / "suggested: 10", top left
    assert (none[caption] < 100).any() and not np.array_equal(none[caption], some[caption])


def test_report_csv_plot_and_summary(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    report = tmp_path / "scores.csv"
    r = CliRunner().invoke(
        main,
        [
            str(a)
            for a in (
                "segment",
                frames,
                "--mask",
                mask,
                "--out",
                tmp_path / "o",
                "--weights",
                random_checkpoint,
                "--size",
                64,
                "--gc-every",
                2,
                "--gc-steps",
                1,
                "--report",
                report,
            )
        ],
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(open(report)))
    assert rows[0] == ["frame", "object", "score"]
    n = len(list(frames.iterdir()))
    ids = sorted(int(i) for i in np.unique(read_mask(mask)) if i)
    assert [(int(a), int(b)) for a, b, _ in rows[1:]] == [(t, i) for t in range(1, n) if t % 2 == 0 for i in ids]
    assert all(0 <= float(row[2]) <= 1 for row in rows[1:])
    assert Image.open(report.with_suffix(".png")).size == (640, 240)
    summary = json.loads((tmp_path / "o" / "cyclevos.json").read_text())
    assert summary["report"] == str(report) and summary["scored_frames"] == (len(rows) - 1) // len(ids)
    assert set(summary["suggested_keyframes"]) <= {int(row[0]) for row in rows[1:]}
    bad = CliRunner().invoke(
        main,
        [
            str(a)
            for a in (
                "segment",
                frames,
                "--mask",
                mask,
                "--out",
                tmp_path / "o2",
                "--weights",
                random_checkpoint,
                "--report",
                tmp_path / "x.txt",
            )
        ],
    )
    assert bad.exit_code == 2 and "--report" in bad.output
