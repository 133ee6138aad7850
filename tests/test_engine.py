import numpy as np
import pytest
import torch
from conftest import moving_square_clip

from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig, MemoryConfig
from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.inference.engine import InferenceCore
from comfyui_cyclevos.inference.memory import MemoryBank
from comfyui_cyclevos.model.network import CycleVOSNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CycleVOSNet().eval()


def engine(net, **memory):
    return InferenceCore(
        net,
        InferenceConfig(
            size=64, precision="fp32", memory=MemoryConfig(**memory), correction=CorrectionConfig(enabled=False)
        ),
    )


def test_output_is_at_the_frame_size_and_a_distribution(net):
    frames, labels = moving_square_clip(n=4, H=50, W=90, objects=2)
    eng = engine(net)
    first = eng.step(frames[0], labels[0])
    assert first.shape == (3, 50, 90)
    assert (eng.labels(first) == labels[0]).all()  # the given mask comes back exactly
    for f in frames[1:]:
        p = eng.step(f)
        assert p.shape == (3, 50, 90) and p.dtype == torch.float32
        assert torch.allclose(p.sum(0), torch.ones(50, 90), atol=1e-4)
    assert eng.object_ids == [1, 2]


def test_memory_stays_within_capacity(net):
    frames, labels = moving_square_clip(n=30)
    eng = engine(net, every=2, capacity=3)
    eng.step(frames[0], labels[0])
    sizes = []
    for f in frames[1:]:
        eng.step(f)
        sizes.append(len(eng.memory))
        kinds = [e.kind for e in eng.memory.all_entries()]
        assert kinds.count("first") == 1
        assert sum(k == "periodic" for k in kinds) <= 3
    assert max(sizes) == 1 + 3 + 1  # first + capacity + temporary previous frame
    # the oldest periodic entries were dropped, the newest kept
    periodic = [e.frame_index for e in eng.memory.entries if e.kind == "periodic"]
    assert periodic == [24, 26, 28]


def test_memory_bank_drops_oldest_non_first():
    bank = MemoryBank(MemoryConfig(capacity=2))
    for i, kind in [(0, "first"), (3, "user"), (5, "periodic"), (10, "periodic")]:
        bank.write(i, kind, torch.full((1, 2, 3), float(i)), torch.full((1, 2, 3), float(i)))
    assert [e.frame_index for e in bank.entries] == [0, 3, 10]  # periodic goes before user
    bank.write(11, "temp", torch.full((1, 2, 3), 11.0), torch.full((1, 2, 3), 11.0))
    bank.write(12, "user", torch.full((1, 2, 3), 12.0), torch.full((1, 2, 3), 12.0))
    assert [e.frame_index for e in bank.entries] == [0, 3, 12] and bank.temp is None
    # the read holds exactly the kept frames' keys and values, whatever slots they moved to
    keys, values, valid = bank.read()
    assert valid is None and keys.shape == (1, 1, 2, 3 * 3)
    assert sorted(set(values[0, 0, 0].tolist())) == [0.0, 3.0, 12.0]
    for e in bank.entries:
        assert (bank.value_of(e) == e.frame_index).all()


def test_object_added_on_a_later_frame(net):
    frames, labels = moving_square_clip(n=6, objects=2)
    eng = engine(net)
    only_first = np.where(labels[0] == 1, 1, 0).astype(np.uint8)
    eng.step(frames[0], only_first)
    eng.step(frames[1])
    p = eng.step(frames[2], np.where(labels[2] == 2, 7, 0).astype(np.uint8))
    assert eng.object_ids == [1, 7]
    assert p.shape[0] == 3
    ids = eng.labels(p)
    assert (ids[labels[2] == 2] == 7).all()
    # older memory frames hold no value for the new object
    valid = {e.frame_index: eng.memory.valid_of(e).tolist() for e in eng.memory.all_entries()}
    assert valid[0] == [True, False] and valid[2] == [True, True]
    p = eng.step(frames[3])
    assert p.shape[0] == 3


def test_mask_on_a_later_frame_takes_over(net):
    frames, labels = moving_square_clip(n=5)
    eng = engine(net)
    eng.step(frames[0], labels[0])
    eng.step(frames[1])
    fix = np.zeros_like(labels[2])
    fix[30:50, 40:70] = 1  # the user says object 1 is here on frame 2
    p = eng.step(frames[2], fix)
    ids = eng.labels(p)
    assert (ids == fix).all()
    assert eng.memory.entries[-1].kind == "user" and eng.memory.entries[-1].frame_index == 2


def test_box_masks_on_later_frames_are_detected_as_coarse(net):
    from comfyui_cyclevos.inference.engine import box_shaped

    box = torch.zeros(1, 20, 20, dtype=torch.bool)
    box[0, 3:9, 4:15] = True
    assert box_shaped(box)
    blob = box.clone()
    blob[0, 3, 4] = False
    blob[0, 3:5, 4:6] = False
    assert not box_shaped(blob)


@pytest.mark.parametrize("problem", ["size", "empty", "ids", "first"])
def test_bad_masks_give_one_line_errors(net, problem):
    frames, labels = moving_square_clip(n=2)
    eng = engine(net)
    if problem == "size":
        with pytest.raises(InputError, match="resize the mask"):
            eng.step(frames[0], labels[0][:-1])
    elif problem == "empty":
        with pytest.raises(InputError, match="no object pixels"):
            eng.step(frames[0], np.zeros_like(labels[0]))
    elif problem == "ids":
        too_many = labels[0].astype(np.int32)
        too_many[0, 0] = 256
        with pytest.raises(InputError, match="1..255"):
            eng.step(frames[0], too_many)
    else:
        with pytest.raises(InputError, match="first frame needs a mask"):
            eng.step(frames[0])


def test_frames_of_another_size_are_refused(net):
    frames, labels = moving_square_clip(n=2)
    eng = engine(net)
    eng.step(frames[0], labels[0])
    with pytest.raises(InputError, match="one size"):
        eng.step(frames[1][:, :-2])


@pytest.mark.parametrize("frozen", [False, True])
def test_engine_runs_inside_inference_mode_with_correction(net, frozen):
    """As ComfyUI runs it; frozen: a network loaded for inference, whose cached weight halves are first
    made under inference mode and then recorded by correction's graph."""
    if frozen:
        torch.manual_seed(0)
        net = CycleVOSNet().for_inference()
    frames, labels = moving_square_clip(n=6)
    eng = InferenceCore(net, InferenceConfig(size=64, correction=CorrectionConfig(every=2, steps=2)))
    with torch.inference_mode():
        eng.step(frames[0], labels[0])
        for f in frames[1:]:
            p = eng.step(f)
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("gc", [False, True])
def test_memory_holds_the_written_label_map(net, hard, gc):
    """hard: each frame is memorised as the label map that is written (a corrected frame too); soft: as its
    probabilities (corrected: Eq. 5's values)."""
    frames, labels = moving_square_clip(n=3, objects=2)
    cfg = InferenceConfig(
        size=64,
        precision="fp32",
        memory=MemoryConfig(hard=hard),
        correction=CorrectionConfig(enabled=gc, every=2, steps=2, rate=5000.0),
    )
    eng = InferenceCore(net, cfg)
    eng.step(frames[0], labels[0])
    eng.step(frames[1])
    p = eng.step(frames[2])[
        None
    ]  # frame 2: corrected when gc (K=2), memorised as periodic (MemoryConfig.every=5: temp)
    written = torch.nn.functional.one_hot(p.argmax(1), 3).permute(0, 3, 1, 2)[:, 1:].float()
    x = eng.geometry.frame_in(frames[2], eng.device)
    with torch.no_grad():
        _, v_written = net.memorize(x, written)
        _, v_soft = net.memorize(x, p[:, 1:])
    stored = eng.memory.value_of(eng.memory.temp).reshape(v_written.shape)
    d_written, d_soft = (stored - v_written).abs().max(), (stored - v_soft).abs().max()
    assert (d_written < d_soft / 5) if hard else (d_soft < d_written / 5)
