"""Gradient correction (Eq. 5) and cycle-ERF (Eq. 6): mechanics on a random network, effects with the
shipped weights on real DAVIS frames."""

import numpy as np
import pytest
import torch
from conftest import shared_data
from PIL import Image

from comfyui_cyclevos.config import CorrectionConfig, CycleERFConfig
from comfyui_cyclevos.cycle.correction import (
    clean_masks,
    correct_sequence,
    edge_band,
    gradient_correct,
    loss_target,
    normalize_objects,
)
from comfyui_cyclevos.cycle.erf import compute_cycle_erf, cycle_erf_map
from comfyui_cyclevos.demo import demo_clip
from comfyui_cyclevos.filters import dilate_disk, gaussian_blur
from comfyui_cyclevos.media.davis import read_label_png, sequence_paths
from comfyui_cyclevos.media.frames import open_frames
from comfyui_cyclevos.media.masks import read_mask
from comfyui_cyclevos.model.checkpoint import checkpoint_meta, default_weights_path, load_checkpoint
from comfyui_cyclevos.model.geometry import Geometry
from comfyui_cyclevos.model.network import CycleVOSNet


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return CycleVOSNet().eval()


@pytest.fixture(scope="module")
def shipped():
    path = default_weights_path()
    assert path.is_file(), f"{path} is missing: the shipped weights are part of the repository"
    return load_checkpoint(path), float(checkpoint_meta(path)["gc_rate"])


def test_loss_target_is_each_cells_covered_share():
    """Eq. 4 is taken where the decoder predicts (1/4): the reference mask becomes the share of each 4x4
    cell that it covers."""
    m = torch.zeros(1, 2, 8, 12)
    m[0, 0, :2, :4] = 1  # half of the first cell
    m[0, 1, 4:, 8:] = 1  # all of the last one
    want = torch.zeros(1, 2, 2, 3)
    want[0, 0, 0, 0], want[0, 1, 1, 2] = 0.5, 1.0
    assert torch.equal(loss_target(m), want)


def test_correction_runs_inside_inference_mode_and_stays_in_range(random_net):
    x0, x1 = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    m0, m1 = (torch.rand(1, 2, 64, 96) > 0.5).float(), torch.rand(1, 2, 64, 96)
    with torch.inference_mode():
        f0, f1 = random_net.encode_frame(x0), random_net.encode_frame(x1)
        out, losses = gradient_correct(
            random_net, m1, x1, f1, ref_frame=x0, ref_features=f0, ref_masks=m0, steps=3, rate=1e4, return_losses=True
        )
    assert out.shape == m1.shape and 0 <= out.min() and out.max() <= 1
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert not torch.equal(out, m1)  # the mask moved
    assert torch.allclose(normalize_objects(out).sum(1), torch.ones(1, 64, 96), atol=1e-5)


def test_cycle_erf_runs_inside_inference_mode(random_net):
    a = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    target = np.zeros((40, 60), bool)
    target[10:30, 20:40] = True
    with torch.inference_mode():
        erf = compute_cycle_erf(
            random_net, ref_frame=a, target_frame=a, target_mask=target, size=48, config=CycleERFConfig(steps=3)
        )
    assert erf.map.shape == (40, 60) and erf.map.dtype == np.float32
    assert erf.map.min() >= 0 and erf.map.max() == pytest.approx(1.0) and erf.scale == erf.peak > 0
    # another model's scale: the same raw map drawn against twice its peak
    half = compute_cycle_erf(
        random_net,
        ref_frame=a,
        target_frame=a,
        target_mask=target,
        size=48,
        config=CycleERFConfig(steps=3),
        scale=2 * erf.peak,
    )
    assert half.peak == pytest.approx(erf.peak) and np.allclose(half.map, erf.map / 2, atol=1e-6)


def _frames(seq: str, *idx: int):
    frames, anns = sequence_paths(shared_data("davis2016", "dev-480p"), seq)
    return [np.asarray(Image.open(frames[i]).convert("RGB")) for i in idx], [read_label_png(anns[i]) > 0 for i in idx]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seq, t", [("camel", 30), ("blackswan", 20)])
def test_correction_of_a_box_mask_raises_its_iou(shipped, seq, t):
    """Paper Table 5: a coarse (bounding box) mask for frame t, corrected against frame 0's mask at the
    engine's rate for coarse masks, lowers the reconstruction loss of Y_1 and raises the IoU against the
    ground truth, staying near the box."""
    net, _ = shipped
    (f0, ft), (y0, yt) = _frames(seq, 0, t)
    box = np.zeros_like(yt)
    ys, xs = np.nonzero(yt)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    geo = Geometry.for_frame(*yt.shape, 240)
    c = CorrectionConfig()
    with torch.inference_mode():
        x0, xt = geo.frame_in(f0, "cpu"), geo.frame_in(ft, "cpu")
        F0, Ft = net.encode_frame(x0), net.encode_frame(xt)
        m0, mbox, gt = (geo.masks_in(torch.from_numpy(m)[None], "cpu") for m in (y0, box, yt))
        corrected, losses = gradient_correct(
            net,
            mbox,
            xt,
            Ft,
            ref_frame=x0,
            ref_features=F0,
            ref_masks=m0,
            steps=c.steps,
            rate=c.coarse_rate,
            return_losses=True,
        )
    assert losses[-1] < 0.9 * losses[0]
    assert _iou(corrected, gt) > _iou(mbox, gt) + 0.01
    assert _iou(corrected, mbox) > 0.8


def test_cycle_erf_on_camel_concentrates_on_the_object(shipped):
    net, _ = shipped
    (f0, f40), (y0, y40) = _frames("camel", 0, 40)
    with torch.inference_mode():
        erf = compute_cycle_erf(net, ref_frame=f0, target_frame=f40, target_mask=y40).map
    assert erf.shape == y0.shape
    assert erf[y0].mean() >= 2 * erf[~y0].mean()
    # the stride pattern is gone: the share of the map's energy at period-2 frequencies (rows or columns)
    # at the processing size, where the mask meets the network's stride-2 layers
    geo = Geometry.for_frame(*y0.shape, 240)
    x0, x40 = geo.frame_in(f0, "cpu"), geo.frame_in(f40, "cpu")
    m40 = geo.masks_in(torch.from_numpy(y40)[None], "cpu")
    with torch.inference_mode():
        raw = cycle_erf_map(net, ref_x=x0, target_x=x40, target_mask=m40, config=CycleERFConfig(smooth=0)).numpy()
        smooth = gaussian_blur(torch.from_numpy(raw), CycleERFConfig.smooth).numpy()
    assert _period2_energy(raw) > 0.02 and _period2_energy(smooth) < 0.002


def _period2_energy(m: np.ndarray) -> float:
    h, w = m.shape
    power = np.abs(np.fft.fft2(m - m.mean())) ** 2
    fy, fx = np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.fftfreq(w))[None, :]
    near = (np.abs(fy - 0.5) < 1.5 / h) | (np.abs(fx - 0.5) < 1.5 / w)
    return float(power[near].sum() / power.sum())


def test_clean_masks_keep_the_hard_label_map_or_its_soft_edge():
    """Issue 30: residue far from the object is dropped; by default the masks are the engine's hard label
    map (argmax of background and objects), with soft_edges the soft values within the band."""
    m = torch.zeros(1, 2, 40, 60)
    m[0, 0, 5:20, 5:20] = 0.9
    m[0, 0, 5:20, 20:22] = 0.4  # a soft edge, just outside the hard object
    m[0, 1, 25:35, 40:55] = 0.8
    m[0, 1, 28:32, 44:50] = 0.95
    m[0, 0, 28:32, 44:50] = 0.6  # both above 0.5: the more likely object takes the pixel
    m[0, 0, 30:38, 2:10] = 0.45  # residue far from both
    hard = clean_masks(m)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert hard[0, 0, 5:20, 5:20].all() and not hard[0, 0, 5:20, 20:22].any() and not hard[0, 0, 30:38].any()
    assert hard[0, 1, 25:35, 40:55].all() and (hard.sum(1) <= 1).all()
    soft = clean_masks(m, soft_edges=True, band=3)
    assert torch.equal(soft[0, 0, 5:20, 5:22], m[0, 0, 5:20, 5:22])  # the edge kept soft
    assert not soft[0, 0, 30:38, 2:10].any() and not soft[0, 0, 28:32, 44:50].any()
    assert torch.equal(clean_masks(m[:, 1]), hard[:, 1])  # one object: above 0.5
    assert edge_band(240, 426, 240) == 8 and edge_band(1080, 1920, 240) == 36


def test_corrected_demo_mask_is_clean_away_from_the_object(shipped):
    """Issue 30: frame 0's mask corrected on frame 11 of the demo clip left ~1,400 pixels above 0.05 (up to
    0.22) more than 8 pixels from the thresholded bear. Now none by default, and none beyond the edge band
    with soft_edges, which still keeps soft values at the edge."""
    net, rate = shipped
    clip, mask_path = demo_clip()
    frames = [f for t, (_, f) in zip(range(12), open_frames(clip)) if t in (0, 11)]
    frames = torch.from_numpy(np.stack(frames)).float() / 255
    m0 = torch.from_numpy(read_mask(mask_path) > 0).float()
    masks = m0[None].repeat(2, 1, 1)
    with torch.inference_mode():
        hard = correct_sequence(net, frames, masks, steps=4, rate=rate, size=240)
        soft = correct_sequence(net, frames, masks, steps=4, rate=rate, size=240, soft_edges=True)
    band = edge_band(*m0.shape, 240)
    for out in (hard, soft):
        m = out[1].numpy()
        assert torch.equal(out[0], m0)  # the reference frame is kept
        far = ~dilate_disk(m > 0.5, band)
        assert int((m[far] > 0.05).sum()) == 0, (int((m[far] > 0.05).sum()), float(m[far].max()))
    assert set(hard.unique().tolist()) <= {0.0, 1.0} and torch.equal(hard[1], (soft[1] > 0.5).float())
    assert int(((soft[1] > 0.05) & (soft[1] < 0.95)).sum()) > 100  # soft edges asked for: soft edges given
