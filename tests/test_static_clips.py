"""Synthetic clips from still images with masks (the static training stage), on generated images."""

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.training.static_clips import StaticClipConfig, StaticClipSampler, find_pairs

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 200, 40)]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """DUTS-like layout: images/ and masks/ side by side, one solid-coloured blob on noise per image."""
    root = tmp_path_factory.mktemp("static")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, colour in enumerate(COLOURS):
        H, W = 90 + 10 * i, 120
        img = rng.integers(0, 60, (H, W, 3)).astype(np.uint8) + 100
        m = np.zeros((H, W), np.uint8)
        r, c = 20 + 3 * i, 30 + 5 * i
        m[r : r + 40, c : c + 50] = 255
        img[m > 0] = colour
        Image.fromarray(img).save(root / "images" / f"im{i}.jpg", quality=95)
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
    (root / "images" / "orphan.jpg").write_bytes((root / "images" / "im0.jpg").read_bytes())  # no mask: skipped
    return root


def sampler(root, **kw):
    return StaticClipSampler([root], StaticClipConfig(crop=64, **kw))


def test_pairs_are_found_by_name(image_root, tmp_path):
    pairs = find_pairs(image_root)
    assert [(i.name, m.name) for i, m in pairs] == [(f"im{k}.jpg", f"im{k}.png") for k in range(4)]
    with pytest.raises(InputError, match="no image with a mask"):
        find_pairs(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        find_pairs(tmp_path / "missing")


def test_batch_shapes_and_ids(image_root):
    s = sampler(image_root)
    frames, masks, valid = s.sample(4, 5, torch.Generator().manual_seed(0))
    assert frames.shape == (4, 3, 3, 64, 64) and masks.shape == (4, 3, 3, 64, 64) and valid.shape == (4, 3)
    assert frames.min() >= 0 and frames.max() <= 1
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert valid[:, 0].all()  # every clip tracks at least one object
    assert (masks.sum(1) <= 1).all()  # one id per pixel
    assert (masks[~valid] == 0).all()  # padding objects are empty
    first = masks[:, :, 0].flatten(2).mean(-1)  # (B, O) area on the first frame
    assert (first[valid] >= StaticClipConfig.min_area).all()


def test_the_same_seed_gives_the_same_clips(image_root):
    s = sampler(image_root)
    a = s.sample(2, 5, torch.Generator().manual_seed(7))
    b = s.sample(2, 5, torch.Generator().manual_seed(7))
    c = s.sample(2, 5, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_frames_move(image_root):
    clip = sampler(image_root, blur_prob=0.0).clip(torch.Generator().manual_seed(1))
    m = clip.masks[0]  # (T, S, S)
    assert not torch.equal(m[0], m[1]) and not torch.equal(m[1], m[2])  # per-frame affine and warp


def test_distractors_are_look_alikes_and_not_tracked(image_root):
    """A distractor is visible somewhere, never in a tracked mask, and looks like a tracked object."""
    s = sampler(image_root, objects=1, object_counts=(1.0,), own_background_prob=0.0, blur_prob=0.0)
    g = torch.Generator().manual_seed(3)
    seen = 0
    for _ in range(6):
        clip = s.clip(g, distractor=True)
        d = clip.distractor  # (T, S, S) bool
        assert not (d & (clip.masks.sum(0) > 0)).any()
        if d[0].float().mean() < 0.02 or clip.masks[0, 0].mean() < 0.02:
            continue  # covered or cropped away
        seen += 1
        tracked = clip.frames[0][:, clip.masks[0, 0] > 0].mean(1)  # (3,) mean colour
        look = clip.frames[0][:, d[0]].mean(1)
        background = clip.frames[0][:, (clip.masks[0, 0] == 0) & ~d[0]].mean(1)
        assert (look - tracked).norm() < (background - tracked).norm()
    assert seen >= 2
    without = s.clip(torch.Generator().manual_seed(3), distractor=False)
    assert not without.distractor.any()
