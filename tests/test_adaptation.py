"""Test-time cyclic adaptation (cycle/adaptation.py) and its drift guard (cycle/drift_guard.py)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import moving_square_clip

from comfyui_cyclevos.cli import main
from comfyui_cyclevos.config import AdaptConfig, GuardConfig, InferenceConfig
from comfyui_cyclevos.cycle.adaptation import (
    _EncoderCache,
    _prepare,
    adapt,
    cycle_loss,
    sample_clips,
    spread_positions,
)
from comfyui_cyclevos.cycle.drift_guard import DriftGuard
from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.inference.video_adaptation import network_for_video
from comfyui_cyclevos.model.network import CycleVOSNet
from comfyui_cyclevos.runner import segment_frames

SIZE = 64


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CycleVOSNet().for_inference()


def _fixed_loss(net, frames, keyframes, seed=123, clips=6):
    """The cycle loss (Eq. 2-4) of ``net`` on the same clips whatever the network: a fair comparison."""
    kept, _, masks, drawn = _prepare(frames, keyframes, size=SIZE, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    picked = sample_clips(len(kept), sorted(masks), batch=clips, max_gap=3, flip=False, generator=g)
    cache = _EncoderCache(net, kept, late_trained=False)
    with torch.no_grad():
        every = cache.features([c[0][i] for i in range(3) for c in picked], [False] * 3 * len(picked))
        feats = [every.select(slice(i * len(picked), (i + 1) * len(picked))) for i in range(3)]
        ref = torch.stack([masks[k] for *_, k in picked])
        return float(cycle_loss(net, feats, ref, torch.stack([drawn[k] for *_, k in picked]), 1.0))


def test_adaptation_lowers_the_cycle_loss_on_a_moving_object_clip(net):
    frames, labels = moving_square_clip(n=8, objects=2)
    keyframes = {0: labels[0]}
    config = AdaptConfig(steps=20, rate=1e-3, max_gap=3)
    result = adapt(net, iter(frames), keyframes, config=config, size=SIZE)
    before, after = _fixed_loss(net, frames, keyframes), _fixed_loss(result.net, frames, keyframes)
    assert len(result.losses) == 20
    assert after < 0.8 * before, (before, after)


def test_the_callers_network_is_bit_identical_afterwards(net):
    frames, labels = moving_square_clip(n=6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.requires_grad for p in net.parameters()]
    result = adapt(net, iter(frames), {0: labels[0]}, config=AdaptConfig(steps=3, rate=1e-2), size=SIZE)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert grads == [p.requires_grad for p in net.parameters()]
    moved = [k for k, v in result.net.state_dict().items() if not torch.equal(before[k], v)]
    assert moved and all(k.startswith(("decoder.", "mask_encoder.")) for k in moved)  # the trained parts only
    assert not any(p.requires_grad for p in result.net.parameters())  # frozen again, ready for the engine


def test_the_same_seed_gives_the_same_masks(net):
    frames, labels = moving_square_clip(n=6)

    def run(seed):
        config = InferenceConfig(size=SIZE, precision="fp32", adapt=AdaptConfig(steps=4, rate=1e-2, seed=seed))
        return segment_frames(net, frames, {0: labels[0]}, config=config)

    a, b, other = run(0), run(0), run(1)
    assert torch.equal(a.ids, b.ids)
    weights = [dict(r.adaptation.adaptation.net.named_parameters())["decoder.pred.weight"] for r in (a, b, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_every_keyframe_is_a_reference_forward_and_backward():
    g = torch.Generator().manual_seed(0)
    clips = sample_clips(10, [0, 6], batch=200, max_gap=3, flip=True, generator=g)
    starts = {k for _, _, k in clips}
    backward = [c for c, _, k in clips if k == 6 and c[1] < 6]
    forward = [c for c, _, k in clips if k == 6 and c[1] > 6]
    assert starts == {0, 6} and backward and forward
    assert all(c[0] == k for c, _, k in clips)  # every clip starts at its keyframe
    assert all(abs(c[2] - c[1]) <= 3 for c, _, _ in clips)


def test_t1_visits_every_part_of_the_video_once():
    # 30 clips on a 31-frame video from frame 0: each frame 1..30 is some clip's t1, exactly once
    g = torch.Generator().manual_seed(0)
    positions = spread_positions(30, g)
    assert sorted(int(u * 30) for u in positions) == list(range(30))
    assert positions != sorted(positions)  # in random order: consecutive steps see different parts
    clips = sample_clips(31, [0], batch=30, max_gap=3, flip=False, generator=g, positions=positions)
    assert sorted(c[1] for c, _, _ in clips) == list(range(1, 31))


def test_a_later_keyframe_alone_adapts_backward(net):
    frames, labels = moving_square_clip(n=8)
    result = adapt(net, iter(frames), {5: labels[5]}, config=AdaptConfig(steps=2, rate=1e-3), size=SIZE)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))


def test_cancel_inside_adaptation_stops_it(net):
    frames, labels = moving_square_clip(n=6)
    seen = []

    class Cancelled(Exception):
        pass

    def progress(step, steps):
        seen.append(step)
        if step == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        adapt(net, iter(frames), {0: labels[0]}, config=AdaptConfig(steps=50), size=SIZE, progress=progress)
    assert seen == [0, 1, 2, 3]


def _square(y, x, H=48, W=64, s=12):
    m = np.zeros((H, W), np.uint8)
    m[y : y + s, x : x + s] = 1
    return m


def test_the_guard_keeps_a_refined_track_and_refuses_a_drift():
    track = [_square(10, 5 + 2 * t) for t in range(12)]
    refined = [_square(10, 5 + 2 * t, s=13) for t in range(12)]
    drifted = track[:2] + [_square(30, 40 - t) for t in range(10)]  # jumps to a look-alike elsewhere
    same = DriftGuard([1], GuardConfig())
    away = DriftGuard([1], GuardConfig())
    for a, b, c in zip(track, refined, drifted):
        same.update(a, b)
        away.update(a, c)
    assert same.decide().use_adapted
    decision = away.decide()
    assert not decision.use_adapted and decision.disagree > 0.5 and "original kept" in decision.reason


def test_the_guard_takes_the_adapted_track_when_the_original_drifted():
    steady = [_square(10, 5 + 2 * t) for t in range(12)]
    jumpy = [_square(10, 5 + 2 * t, s=12 if t % 2 else 4) for t in range(12)]  # the original's area jumps
    guard = DriftGuard([1], GuardConfig())
    for a, b in zip(jumpy, steady):
        guard.update(a, b)
    assert guard.decide().use_adapted


def test_segment_adapts_and_records_it(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    out = tmp_path / "out"
    args = ["segment", str(frames), "--mask", str(mask), "--out", str(out), "--weights", str(random_checkpoint)]
    r = CliRunner().invoke(main, [*args, "--size", "64", "--adapt", "3", "--adapt-rate", "1e-3", "--adapt-batch", "1"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "cyclevos.json").read_text())
    assert summary["config"]["adapt"]["steps"] == 3 and summary["adaptation"]["steps"] == 3
    assert summary["config"]["adapt"]["batch"] == 1
    assert summary["adaptation"]["used"] in ("adapted", "original") and "guard" in summary["adaptation"]
    r = CliRunner().invoke(main, [*args, "--size", "64", "--adapt", "0"])
    assert r.exit_code == 0, r.output
    assert "adaptation" not in json.loads((out / "cyclevos.json").read_text())


def test_a_nan_frame_is_refused_before_adaptation_trains_on_it(net):
    frames, labels = moving_square_clip(n=6)
    floats = torch.from_numpy(frames).float() / 255
    floats[3, 10:20, 10:20] = float("nan")
    steps = []
    config = InferenceConfig(size=SIZE, precision="fp32", adapt=AdaptConfig(steps=3))
    with pytest.raises(InputError, match="NaN"):
        network_for_video(
            net, lambda: enumerate(floats), {0: labels[0]}, config=config, progress=lambda s, n: steps.append(s)
        )
    assert steps == []  # refused while the frames are read, before any step


def test_the_log_says_whether_the_adapted_network_is_used(net, caplog):
    # ComfyUI shows the INFO log: the artist sees the adaptation's time and the guard's decision
    frames, labels = moving_square_clip(n=6)
    config = InferenceConfig(size=SIZE, precision="fp32", adapt=AdaptConfig(steps=2, rate=1e-3))
    with caplog.at_level("INFO", logger="cyclevos"):
        chosen = network_for_video(net, lambda: enumerate(frames), {0: labels[0]}, config=config)
    (line,) = [r.getMessage() for r in caplog.records if "adapted to the video" in r.getMessage()]
    assert "(2 steps)" in line and chosen.decision.reason in line
