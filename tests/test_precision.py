"""The precision policy: a frozen network runs with its weights cast once, computing what autocast computes.
bf16 autocast runs on any CPU (emulated where it is not native), so these run everywhere."""

import pytest
import torch
from conftest import moving_square_clip
from torch.utils._python_dispatch import TorchDispatchMode

from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig
from comfyui_cyclevos.cycle.correction import gradient_correct
from comfyui_cyclevos.inference.engine import InferenceCore
from comfyui_cyclevos.model.layers import SplitConv2d
from comfyui_cyclevos.model.network import CycleVOSNet
from comfyui_cyclevos.runtime.precision import Precision

BF16 = Precision(torch.device("cpu"), torch.bfloat16)


@pytest.fixture(scope="module")
def frozen():
    torch.manual_seed(0)
    return CycleVOSNet().for_inference().to(memory_format=torch.channels_last)


class CastInputs(TorchDispatchMode):
    """Records the storage of every tensor cast to bfloat16."""

    def __init__(self):
        super().__init__()
        self.cast = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16:
            self.cast.add(args[0].untyped_storage().data_ptr())
        return out


def weight_storages(net) -> set:
    """The storages of every parameter and of SplitConv2d's cached halves (made if not yet)."""
    tensors = list(net.parameters())
    tensors += [h for m in net.modules() if isinstance(m, SplitConv2d) for h in m.halves()]
    return {t.untyped_storage().data_ptr() for t in tensors}


def test_an_engine_in_reduced_precision_casts_no_weight(frozen):
    """Autocast casts a frozen weight on every call (it keeps the casts of trainable ones only): seen
    failing before ``Precision.network``, with every convolution's weight and bias cast on every step."""
    frames, labels = moving_square_clip(n=5, objects=2)
    eng = InferenceCore(frozen, InferenceConfig(size=64, correction=CorrectionConfig(every=2, steps=2)), precision=BF16)
    eng.step(frames[0], labels[0])
    eng.step(frames[1])  # every weight and cached half made, alive from here on
    weights = weight_storages(eng.net) | weight_storages(frozen)
    with CastInputs() as mode:
        for f in frames[2:]:  # frame 2 is corrected
            eng.step(f)
    assert mode.cast, "autocast cast nothing: the run did not use bf16"
    assert not mode.cast & weights
    assert all(p.dtype == torch.float32 for p in frozen.parameters()), "the caller's network was changed"


def test_the_cast_network_computes_what_autocast_computes(frozen):
    """Bit for bit: encoder features and a gradient correction, under bf16 autocast, of the network as
    loaded and of ``Precision.network``'s copy; float32 and trainable networks are used as they are."""
    cast = BF16.network(frozen)
    assert cast is not frozen and BF16.network(cast) is cast
    assert Precision(torch.device("cpu")).network(frozen) is frozen
    trainable = CycleVOSNet()
    assert BF16.network(trainable) is trainable
    torch.manual_seed(1)
    x, xr = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    masks, ref = torch.rand(1, 2, 64, 96), (torch.rand(1, 2, 64, 96) > 0.5).float()
    out = []
    for net in (frozen, cast):
        with torch.no_grad(), BF16.autocast():
            f, fr = net.encode_frame(x), net.encode_frame(xr)
        corrected = gradient_correct(
            net, masks, x, f, ref_frame=xr, ref_features=fr, ref_masks=ref, steps=2, precision=BF16
        )
        out.append((f.key, f.f4, f.decoder_part[0], corrected))
    for a, b in zip(*out):
        assert torch.equal(a, b)
