"""The engine's object state (issue 12): objects added and removed on any frame, per-object memory
validity and correction references, reduced precision, and the memory guard."""

import numpy as np
import pytest
import torch
from conftest import moving_square_clip

from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig, MemoryConfig, ModelConfig
from comfyui_cyclevos.cycle import correction as correction_module
from comfyui_cyclevos.cycle.correction import gradient_correct
from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.inference import engine as propagate_module
from comfyui_cyclevos.inference.engine import InferenceCore
from comfyui_cyclevos.model.aggregation import soft_aggregate
from comfyui_cyclevos.model.losses import mask_loss
from comfyui_cyclevos.model.network import CycleVOSNet
from comfyui_cyclevos.runtime.precision import cpu_has_bf16


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CycleVOSNet().eval()


def make_engine(net, precision="fp32", gc=False, K=1, N=2, **memory):
    config = InferenceConfig(
        size=64,
        precision=precision,
        memory=MemoryConfig(**memory),
        correction=CorrectionConfig(enabled=gc, every=K, steps=N),
    )
    return InferenceCore(net, config)


def only(labels, old, new):
    return np.where(labels == old, new, 0).astype(np.uint8)


def assert_distribution(p):
    assert torch.isfinite(p).all()
    assert torch.allclose(p.sum(0), torch.ones_like(p[0]), atol=1e-3)


# 1 ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_reduced_precision_with_correction_runs(net):
    """bf16 autocast on the CPU stands in for CUDA fp16: the encoder and the correction run under the
    same policy (the correction used to meet bf16 features with float32 masks and crash on frame 5)."""
    frames, labels = moving_square_clip(n=7, objects=2)
    eng = make_engine(net, precision="bf16", gc=True, K=5)
    assert eng.precision.dtype == torch.bfloat16
    eng.step(frames[0], labels[0])
    for f in frames[1:]:
        assert_distribution(eng.step(f))


# 2 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gc", [False, True])
def test_an_object_added_later_gives_no_nan(net, gc):
    frames, labels = moving_square_clip(n=7, objects=2)
    eng = make_engine(net, gc=gc, K=1)
    eng.step(frames[0], only(labels[0], 1, 3))
    eng.step(frames[1])
    p = eng.step(frames[2], only(labels[2], 2, 7))
    assert eng.object_ids == [3, 7]
    assert_distribution(p)
    assert (eng.labels(p)[labels[2] == 2] == 7).all()
    for f in frames[3:]:
        assert_distribution(eng.step(f))


# 3 ------------------------------------------------------------------------------------------------
def test_stm_layout_network_takes_an_object_added_later():
    """STM's memory encoder gives one key per object: a new object's key must join the others'."""
    torch.manual_seed(0)
    stm = CycleVOSNet(
        ModelConfig(encoder="resnet18", memory_encoder="stm", key_dim=32, value_dim=64, decoder_dims=(32, 32, 32))
    ).eval()
    frames, labels = moving_square_clip(n=5, objects=2)
    eng = make_engine(stm, gc=True, K=2)
    eng.step(frames[0], only(labels[0], 1, 1))
    eng.step(frames[1])
    assert_distribution(eng.step(frames[2], only(labels[2], 2, 2)))
    for f in frames[3:]:
        assert_distribution(eng.step(f))
    keys, values, valid = eng.memory.read()
    assert keys.shape[1] == 2 and values.shape[1] == 2


# 4 ------------------------------------------------------------------------------------------------
def _first_update(net, frame, ref_frame, masks, ref_masks, alpha=1e6):
    with torch.no_grad():
        f, rf = net.encode_frame(frame), net.encode_frame(ref_frame)
    return (
        gradient_correct(
            net, masks, frame, f, ref_frame=ref_frame, ref_features=rf, ref_masks=ref_masks, steps=1, rate=alpha
        )
        - masks
    )


def test_correction_loss_is_summed_over_objects(net):
    """Eq. 4 summed over objects, so that each object's gradient, hence its Eq. 5 step, does not shrink
    with the number of objects (a mean made alpha = 150 act like 30 on five objects)."""
    frames, labels = moving_square_clip(n=3, objects=3)
    x = torch.from_numpy(frames[2]).permute(2, 0, 1)[None].float() / 255
    rx = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 255
    masks = torch.stack([torch.from_numpy(labels[2] == i) for i in range(1, 4)])[None].float()
    target = torch.stack([torch.from_numpy(labels[0] == i) for i in range(1, 4)])[None].float()
    with torch.no_grad():
        f, rf = net.encode_frame(x), net.encode_frame(rx)
        target = correction_module.loss_target(target)  # Eq. 4 where the decoder predicts, at 1/4
        loss = correction_module.reconstruction_loss(net, masks, x, f, rx, rf, target, 1.0)
        logits = correction_module.reconstruction_logits(net, masks, x, f, rx, rf, upsample=False)
        pred = soft_aggregate(torch.sigmoid(logits))[:, 1:]
    assert pred.shape[-2:] == (x.shape[-2] // 4, x.shape[-1] // 4)
    per_object = [mask_loss(pred[:, i : i + 1], target[:, i : i + 1], 1.0) for i in range(3)]
    assert torch.allclose(loss, sum(per_object), rtol=1e-4)


def _square_to_correct():
    """Frame 2 of a moving square with a soft mask (0.2 / 0.8) to correct, and frame 0 with its mask."""
    frames, labels = moving_square_clip(n=3, objects=1)
    x = torch.from_numpy(frames[2]).permute(2, 0, 1)[None].float() / 255
    rx = torch.from_numpy(frames[0]).permute(2, 0, 1)[None].float() / 255
    m = torch.from_numpy(labels[2] == 1).float()[None, None] * 0.6 + 0.2
    ref = torch.from_numpy(labels[0] == 1).float()[None, None]
    return x, rx, m, ref


def test_correction_strength_does_not_depend_on_the_processing_size(net):
    """The same content at twice the size gets about the same per-pixel update (the per-pixel mean loss
    alone would give a quarter)."""
    x, rx, m, ref = _square_to_correct()

    def up(t):
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")

    small = _first_update(net, x, rx, m, ref).abs().mean()
    large = _first_update(net, up(x), up(rx), up(m), up(ref)).abs().mean()
    ratio = (large / small).item()
    assert 0.5 < ratio < 2.0, ratio


def test_fewer_correction_steps_move_the_mask_as_far_in_all(net):
    """alpha is quoted at 10 steps: N steps take alpha * 10 / N each, so 5 steps move a mask about as far
    as 10 do (a fixed per-step rate would move it half as far)."""
    x, rx, m, ref = _square_to_correct()
    with torch.no_grad():
        f, rf = net.encode_frame(x), net.encode_frame(rx)
    moved = {
        n: (gradient_correct(net, m, x, f, ref_frame=rx, ref_features=rf, ref_masks=ref, steps=n, rate=1e5) - m)
        .abs()
        .mean()
        .item()
        for n in (5, 10)
    }
    assert moved[10] > 5e-4 and 0.8 < moved[5] / moved[10] < 1.25, moved


# 5 ------------------------------------------------------------------------------------------------
def test_a_later_precise_mask_moves_only_its_objects_references(net, monkeypatch):
    frames, labels = moving_square_clip(n=5, objects=2)
    calls = []

    def spy(net_, masks, frame, features, ref_frame, ref_features, ref_masks, *args, **kwargs):
        calls.append((ref_frame.clone(), ref_masks.clone()))
        return masks

    monkeypatch.setattr(propagate_module, "gradient_correct", spy)
    eng = make_engine(net, gc=True, K=4)
    eng.step(frames[0], labels[0])
    first_x = eng.geometry.frame_in(frames[0], eng.device)
    first_m = eng.geometry.masks_in(torch.from_numpy(labels[0] == 1)[None], eng.device)
    for t in (1, 2, 3):
        eng.step(frames[t], only(labels[2], 2, 2) if t == 2 else None, coarse=False)
    calls.clear()
    eng.step(frames[4])  # a correction frame
    # object 1 is still corrected against frame 0 and its drawn mask, not the engine's frame-2 prediction
    of_first = [(x, m) for x, m in calls if torch.equal(x, first_x)]
    assert len(of_first) == 1 and of_first[0][1].shape[1] == 1
    assert torch.allclose(of_first[0][1][0, 0], first_m[0, 0])
    assert len(calls) == 2  # and object 2 against frame 2


# 6 ------------------------------------------------------------------------------------------------
def _largest_read(net, monkeypatch, eng, frame):
    """The largest tensor exponentiated in a memory read of one step (softmax or exp over positions)."""
    hw = (eng.geometry.padded[0] // 16) * (eng.geometry.padded[1] // 16)
    sizes = []
    for name in ("softmax", "exp"):
        real = getattr(torch, name)

        def spy(t, *a, _real=real, **k):
            if hw in t.shape[-2:]:  # (.., query positions, memory positions)
                sizes.append(t.numel())
            return _real(t, *a, **k)

        monkeypatch.setattr(torch, name, spy)
    eng.step(frame)
    monkeypatch.undo()
    return max(sizes)


def test_the_read_is_not_per_object_after_objects_are_added(net, monkeypatch):
    frames, labels = moving_square_clip(n=6, objects=2)
    together = make_engine(net, K=100)
    together.step(frames[0], labels[0])
    later = make_engine(net, K=100)
    later.step(frames[0], only(labels[0], 1, 1))
    for t in (1, 2, 3):
        together.step(frames[t], labels[2] if t == 2 else None)  # the same memory frames
        later.step(frames[t], only(labels[2], 2, 2) if t == 2 else None)
    assert later.object_ids == together.object_ids == [1, 2]
    assert _largest_read(net, monkeypatch, later, frames[4]) <= _largest_read(net, monkeypatch, together, frames[4])


# removal ------------------------------------------------------------------------------------------
def test_objects_removed_and_given_again(net):
    frames, labels = moving_square_clip(n=6, objects=2)
    eng = make_engine(net, gc=True, K=1)
    eng.step(frames[0], labels[0])
    eng.step(frames[1])
    eng.remove([1])
    assert eng.object_ids == [2]
    p = eng.step(frames[2])
    assert p.shape[0] == 2 and 1 not in eng.labels(p)
    with pytest.raises(InputError, match="5"):
        eng.remove([5])
    p = eng.step(frames[3], only(labels[3], 1, 1))  # object 1 comes back under its id
    assert eng.object_ids == [2, 1]
    assert_distribution(p)
    assert_distribution(eng.step(frames[4]))


# 7 ------------------------------------------------------------------------------------------------
def test_a_read_that_does_not_fit_in_memory_is_refused(net, monkeypatch):
    frames, labels = moving_square_clip(n=2)
    monkeypatch.setattr(propagate_module, "free_memory", lambda device: 2**10, raising=False)
    eng = make_engine(net)
    with pytest.raises(InputError, match="lower the processing size"):
        eng.step(frames[0], labels[0])
    assert eng.frame_index == -1  # nothing changed
