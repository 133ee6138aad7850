"""STM / STM-cycle checkpoint conversion and the project's ResNet backbone.

The key names and shapes in tests/data/keys_*.json were dumped from the original model code (STM's
model.py wrapped in nn.DataParallel, STM-Training's STAN for resnet50/resnet18, torchvision's ResNet),
instantiated with random weights outside the repository; no original code is part of the project.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import random_state, shapes, write_source

from comfyui_cyclevos.errors import WeightsError
from comfyui_cyclevos.model.aggregation import soft_aggregate
from comfyui_cyclevos.model.backbones.resnet import ResNet
from comfyui_cyclevos.model.checkpoint import checkpoint_meta, load_checkpoint
from comfyui_cyclevos.model.convert import convert


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    return random_state(shapes("stm_cycle_resnet18"))


CASES = [
    ("stm", "stm", "resnet50", "others", "module."),
    ("stm_cycle_resnet50", "stm-cycle", "resnet50", "background", ""),
    ("stm_cycle_resnet18", "stm-cycle", "resnet18", "background", ""),
]


@pytest.mark.parametrize("keys,source,encoder,second,prefix", CASES)
def test_convert_released_layouts(tmp_path, keys, source, encoder, second, prefix):
    spec = shapes(keys)
    state = random_state(spec)
    src = write_source(state, tmp_path / "src.pth", source)
    dst = tmp_path / "converted.pt"
    report = convert(src, dst, source)
    net = load_checkpoint(dst)
    cfg = net.config
    assert (cfg.encoder, cfg.memory_encoder, cfg.second_mask) == (encoder, "stm", second)
    assert (cfg.key_dim, cfg.value_dim, tuple(cfg.decoder_dims)) == (128, 512, (256, 256, 256))
    assert report["source_keys"] == len(spec) and checkpoint_meta(dst)["converted_from"] == source
    # nothing left over: every source key but the four normalisation buffers became one of ours
    ours = net.state_dict()
    assert len(ours) == len(spec) - 4
    second_stem = "conv1_o" if source == "stm" else "conv1_bg"
    pairs = {
        "Encoder_Q.res4.1.conv2.weight": "encoder.layer3.1.conv2.weight",
        "Encoder_M.res3.0.downsample.1.running_var": "memory_backbone.layer2.0.downsample.1.running_var",
        f"Encoder_M.{second_stem}.weight": "memory_backbone.conv1_o.weight",
        "Encoder_M.conv1_m.weight": "memory_backbone.conv1_m.weight",
        "KV_M_r4.Key.weight": "key_m.weight",
        "KV_Q_r4.Value.bias": "value_q.bias",
        "Decoder.RF2.ResMM.conv2.bias": "decoder.rf4.res_out.conv2.bias",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(ours[mine], state[prefix + theirs]), mine
    w2 = state[prefix + "Decoder.pred2.weight"]
    assert torch.allclose(ours["decoder.pred.weight"], w2[1:2] - w2[0:1])
    # a forward on a small input: two objects, two memory frames
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 64, 64)
    masks = (torch.rand(1, 2, 64, 64) > 0.5).float()
    with torch.no_grad():
        feats = net.encode_frame(frames[2:3])
        k0, v0 = net.memory_of(*net.memorize(frames[0:1], masks))
        k1, v1 = net.memory_of(*net.memorize(frames[1:2], masks * 0.7))
        logits = net.segment(frames[2:3], torch.cat([k0, k1], -1), torch.cat([v0, v1], -1), features=feats)
    assert feats.f16.shape == (1, net.encoder.channels[2], 4, 4)
    assert k0.shape == (1, 2, 128, 16) and v0.shape == (1, 2, 512, 16)  # one key per object (STM)
    assert logits.shape == (1, 2, 64, 64) and torch.isfinite(logits).all()
    probs = soft_aggregate(torch.sigmoid(logits))
    assert torch.allclose(probs.sum(1), torch.ones(1, 64, 64), atol=1e-5)


def test_convert_half(tmp_path, r18_state):
    src = write_source(r18_state, tmp_path / "src.pth.tar", "stm-cycle")
    convert(src, tmp_path / "half.pt", "stm-cycle", half=True)
    payload = torch.load(tmp_path / "half.pt", weights_only=True)
    assert payload["state_dict"]["key_q.weight"].dtype == torch.float16
    assert load_checkpoint(tmp_path / "half.pt").key_q.weight.dtype == torch.float32


def test_unknown_key_is_named(tmp_path, r18_state):
    state = dict(r18_state, **{"Decoder.RF4.convFS.weight": torch.zeros(256, 64, 3, 3)})
    src = write_source(state, tmp_path / "src.pth.tar", "stm-cycle")
    with pytest.raises(WeightsError, match=r"Decoder\.RF4\.convFS\.weight") as e:
        convert(src, tmp_path / "out.pt", "stm-cycle")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.pt").exists()


def test_missing_key_is_named(tmp_path, r18_state):
    state = {k: v for k, v in r18_state.items() if k != "KV_M_r4.Value.bias"}
    src = write_source(state, tmp_path / "src.pth.tar", "stm-cycle")
    with pytest.raises(WeightsError, match=r"value_m\.bias") as e:
        convert(src, tmp_path / "out.pt", "stm-cycle")
    assert "\n" not in str(e.value)


def test_wrong_shape_is_named(tmp_path, r18_state):
    state = dict(r18_state, **{"Encoder_Q.res3.0.conv1.weight": torch.zeros(128, 64, 1, 1)})
    src = write_source(state, tmp_path / "src.pth.tar", "stm-cycle")
    with pytest.raises(WeightsError, match=r"Encoder_Q\.res3\.0\.conv1\.weight"):
        convert(src, tmp_path / "out.pt", "stm-cycle")


def test_wrong_source_kind_says_which(tmp_path, r18_state):
    src = write_source(r18_state, tmp_path / "src.pth.tar", "stm-cycle")
    with pytest.raises(WeightsError, match=r"Encoder_M\.conv1_bg\.weight.*--from stm-cycle"):
        convert(src, tmp_path / "out.pt", "stm")
    with pytest.raises(WeightsError, match="unknown source"):
        convert(src, tmp_path / "out.pt", "xmem")


def test_other_normalisation_is_refused(tmp_path, r18_state):
    state = dict(r18_state, **{"Encoder_Q.mean": torch.zeros(1, 3, 1, 1)})
    src = write_source(state, tmp_path / "src.pth.tar", "stm-cycle")
    with pytest.raises(WeightsError, match=r"Encoder_Q\.mean"):
        convert(src, tmp_path / "out.pt", "stm-cycle")


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        convert(bad, tmp_path / "out.pt", "stm")
    with pytest.raises(WeightsError, match="not found"):
        convert(tmp_path / "missing.pth", tmp_path / "out.pt", "stm")


def test_two_channel_pred_becomes_one_logit(tmp_path, r18_state):
    """softmax over STM's two logits == sigmoid of our one converted logit, after the x4 upsampling too."""
    src = write_source(r18_state, tmp_path / "src.pth.tar", "stm-cycle")
    convert(src, tmp_path / "out.pt", "stm-cycle")
    pred = load_checkpoint(tmp_path / "out.pt").decoder.pred
    torch.manual_seed(1)
    x = torch.randn(3, 256, 8, 12) * 3
    w2, b2 = r18_state["Decoder.pred2.weight"], r18_state["Decoder.pred2.bias"]
    theirs = F.interpolate(F.conv2d(x, w2, b2, padding=1), scale_factor=4, mode="bilinear", align_corners=False)
    with torch.no_grad():
        ours = F.interpolate(pred(x), scale_factor=4, mode="bilinear", align_corners=False)
    p_theirs = torch.softmax(theirs, 1)[:, 1]
    p_ours = torch.sigmoid(ours[:, 0])
    assert p_theirs.std() > 0.05  # not a saturated, trivially equal case
    assert (p_ours - p_theirs).abs().max() < 1e-5


# ---- the backbone: shapes, and ImageNet initialisation from a torchvision-format file ----


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 128, 256)), ("resnet50", (256, 512, 1024))])
def test_resnet_shapes(name, channels):
    net = ResNet(name).eval()
    assert net.channels == channels
    with torch.no_grad():
        f4, f8, f16 = net(torch.randn(1, 3, 64, 96))
    assert [tuple(t.shape) for t in (f4, f8, f16)] == [
        (1, channels[0], 16, 24),
        (1, channels[1], 8, 12),
        (1, channels[2], 4, 6),
    ]
    mem = ResNet(name, in_extra=2).eval()
    with torch.no_grad():
        assert mem(torch.randn(2, 3, 64, 64), torch.rand(2, 2, 64, 64))[2].shape == (2, channels[2], 4, 4)
    with pytest.raises(ValueError):
        mem(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("old_file", [False, True])
def test_load_pretrained_torchvision_file(tmp_path, name, old_file):
    state = random_state(shapes(f"torchvision_{name}"), seed=3)
    if old_file:  # torchvision's original ImageNet files predate BatchNorm's num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    expected_dropped = sorted(k for k in state if k.startswith(("layer4.", "fc.")))
    for in_extra in (0, 2):
        net = ResNet(name, in_extra=in_extra)
        stem = net.conv1_m.weight.clone() if in_extra else None
        assert net.load_pretrained(path) == expected_dropped
        own = net.state_dict()
        for k in ("conv1.weight", "bn1.running_var", "layer3.1.conv2.weight", "layer2.0.downsample.0.weight"):
            assert torch.equal(own[k], state[k]), k
        if in_extra:  # no ImageNet counterpart: the mask stems keep their initialisation
            assert torch.equal(net.conv1_m.weight, stem)


def test_load_pretrained_names_bad_keys(tmp_path):
    state = random_state(shapes("torchvision_resnet18"))
    bad = dict(state, **{"layer3.0.conv9.weight": torch.zeros(1)})
    torch.save(bad, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"layer3\.0\.conv9\.weight"):
        ResNet("resnet18").load_pretrained(tmp_path / "extra.pth")
    missing = {k: v for k, v in state.items() if k != "layer2.1.bn2.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"layer2\.1\.bn2\.weight"):
        ResNet("resnet18").load_pretrained(tmp_path / "missing.pth")
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match="resnet50"):  # the wrong depth is refused, not half-loaded
        ResNet("resnet50").load_pretrained(tmp_path / "r18.pth")


@pytest.mark.parametrize("keys,source", [(c[0], c[1]) for c in CASES])
@pytest.mark.parametrize("gc", ["--gc", "--no-gc"])
def test_converted_checkpoint_runs_cyclevos_segment(tmp_path, clip_folder, keys, source, gc):
    """A converted checkpoint of each kind (STM R50, STM-cycle R50 and R18) runs the whole command, with and
    without gradient correction."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from comfyui_cyclevos.cli import main

    ckpt = tmp_path / "converted.pt"
    convert(write_source(random_state(shapes(keys)), tmp_path / "src.pth", source), ckpt, source)
    frames, mask = clip_folder
    args = [
        "segment",
        str(frames),
        "--mask",
        str(mask),
        "--out",
        str(tmp_path / "o"),
        "--weights",
        str(ckpt),
        "--size",
        "64",
        gc,
        "--gc-every",
        "3",
        "--gc-steps",
        "2",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "o").glob("*.png"))
    assert len(pngs) == 8
    assert all(np.asarray(Image.open(p)).shape == (64, 96) for p in pngs)
