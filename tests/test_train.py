import csv

import numpy as np
import pytest
import torch
from conftest import moving_square_clip
from PIL import Image

from comfyui_cyclevos.model.checkpoint import load_checkpoint
from comfyui_cyclevos.model.network import CycleVOSNet
from comfyui_cyclevos.training.clips import ClipConfig, ClipSampler
from comfyui_cyclevos.training.train import CycleLoss, TrainConfig, train


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    """A tiny DAVIS-layout folder: 3 sequences of 8 frames with every frame annotated."""
    root = tmp_path_factory.mktemp("davis")
    for s in range(3):
        frames, labels = moving_square_clip(n=8, H=64, W=96, objects=1)
        frames = np.roll(frames, 7 * s, axis=1)
        labels = np.roll(labels, 7 * s, axis=1)
        (root / "JPEGImages" / f"seq{s}").mkdir(parents=True)
        (root / "Annotations" / f"seq{s}").mkdir(parents=True)
        for i, (f, y) in enumerate(zip(frames, labels)):
            Image.fromarray(f).save(root / "JPEGImages" / f"seq{s}" / f"{i:05d}.jpg")
            Image.fromarray(y * 255).save(root / "Annotations" / f"seq{s}" / f"{i:05d}.png")
    return root


def test_clip_sampler_shapes_and_objects(davis_root):
    s = ClipSampler(str(davis_root), ClipConfig(crop=48, paste_prob=1.0, paste_tracked_prob=1.0))
    g = torch.Generator().manual_seed(0)
    frames, masks, valid = s.sample(4, 3, g)
    assert frames.shape == (4, 3, 3, 48, 48) and masks.shape == (4, 2, 3, 48, 48)
    assert 0 <= frames.min() and frames.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert valid[:, 0].all()
    assert (masks[:, 0] * masks[:, 1]).sum() == 0  # a pasted object covers what is under it


def test_cyclic_loss_adds_the_backward_term(davis_root):
    torch.manual_seed(0)
    s = ClipSampler(str(davis_root), ClipConfig(crop=48))
    frames, masks, valid = s.sample(2, 3, torch.Generator().manual_seed(0))
    net = CycleVOSNet()
    memorized = []
    real = net.memorize

    def spy(frame, m, *args, **kwargs):  # keep the masks each memory write is made from
        if m.requires_grad:
            m.retain_grad()
        memorized.append(m)
        return real(frame, m, *args, **kwargs)

    net.memorize = spy

    def last_prediction_grad(cyclic):
        memorized.clear()
        out = CycleLoss(net, cyclic=cyclic, gamma=1.0)(frames, masks, valid)
        out["loss"].backward()
        assert memorized[-1].requires_grad  # the prediction goes into memory not detached (paper 3.2)
        return out, memorized[-1].grad

    base, base_grad = last_prediction_grad(False)
    cyc, cyc_grad = last_prediction_grad(True)
    assert "cycle" in cyc and "cycle" not in base
    assert torch.allclose(cyc["forward"], base["forward"])
    assert torch.allclose(cyc["loss"], cyc["forward"] + cyc["cycle"])
    # the same network and clip: the last prediction's gradient differs only by Eq. 2's backward term,
    # which reaches it through its memory write
    assert (cyc_grad - base_grad).abs().sum() > 1e-6 * base_grad.abs().sum()


def test_train_writes_log_curves_checkpoints_and_resumes(davis_root, tmp_path):
    cfg = TrainConfig(steps=2, batch=2, warmup=1, checkpoint_every=2, threads=1, clip=ClipConfig(crop=48))
    final = train(str(davis_root), str(tmp_path), cfg, log=lambda s: None)
    assert final.exists() and (tmp_path / "last.pt").exists() and (tmp_path / "curves.png").exists()
    net = load_checkpoint(final)
    assert isinstance(net, CycleVOSNet)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["cycle"]) > 0 for r in rows)
    cfg.steps = 3
    train(str(davis_root), str(tmp_path), cfg, resume=True, log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]


def test_gap_grows_by_five_over_each_fifth_of_the_run() -> None:
    cfg = TrainConfig(steps=3500)
    assert [cfg.max_skip(s) for s in (0, 699, 700, 2800, 3499)] == [5, 5, 10, 25, 25]
    assert TrainConfig(steps=3500, skip_every=100).max_skip(250) == 15


def test_train_resnet18_from_a_torchvision_imagenet_file(davis_root, tmp_path):
    """`cyclevos train --arch resnet18 --init FILE`: both encoders start from the user's ImageNet file."""
    from click.testing import CliRunner
    from conftest import random_state, shapes

    from comfyui_cyclevos.cli import main

    imagenet = random_state(shapes("torchvision_resnet18"), seed=5)
    torch.save(imagenet, tmp_path / "resnet18.pth")
    args = [
        "train",
        "--data",
        str(davis_root),
        "--out",
        str(tmp_path / "run"),
        "--arch",
        "resnet18",
        "--init",
        str(tmp_path / "resnet18.pth"),
        "--steps",
        "1",
        "--batch",
        "1",
        "--crop",
        "64",
        "--threads",
        "1",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    net = load_checkpoint(tmp_path / "run" / "final.pt")
    assert net.config.encoder == "resnet18" and net.config.memory_encoder == "stm"
    ours = net.state_dict()
    for k in ("layer1.0.conv1.weight", "layer3.1.conv2.weight", "bn1.running_mean"):
        for branch in ("encoder", "memory_backbone"):  # one Adam step at a warm-up rate moves a weight by < 1e-4
            assert (ours[f"{branch}.{k}"] - imagenet[k]).abs().max() < 1e-3, (branch, k)
    r = CliRunner().invoke(main, args[:-8] + ["--init", str(tmp_path / "missing.pth"), "--steps", "1"])
    assert r.exit_code == 2 and "missing.pth" in r.output
