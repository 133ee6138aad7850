import pytest
import torch

from comfyui_cyclevos.config import ModelConfig
from comfyui_cyclevos.model.aggregation import soft_aggregate
from comfyui_cyclevos.model.layers import SplitConv2d, Upsample4
from comfyui_cyclevos.model.losses import _AggregateLoss, aggregate_loss, mask_loss
from comfyui_cyclevos.model.network import CycleVOSNet


def test_shapes_through_memorize_and_segment():
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(2, 3, 64, 96)
    masks = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        f = net.encode_frame(x)
        assert f.key.shape == (2, 64, 4, 6) and f.decoder_part[0].shape == (2, 128, 4, 6)
        assert f.f8.shape[-2:] == (8, 12) and f.f4.shape[-2:] == (16, 24)
        k, v = net.memorize(x, masks, f)
        assert k.shape == (2, 1, 64, 4, 6)  # fused encoder: one key shared by all objects
        assert v.shape == (2, 3, 128, 4, 6)
        k, v = net.memory_of(k, v)
        assert k.shape == (2, 1, 64, 24) and v.shape == (2, 3, 128, 24)
        logits = net.segment(x, torch.cat([k, k], -1), torch.cat([v, v], -1), f)  # two memory frames
        assert logits.shape == (2, 3, 64, 96)


def _one_frame_memory(net, x, f, objects):
    """Keys and values of frame x memorised with random masks of ``objects`` objects."""
    return net.memory_of(*net.memorize(x, torch.rand(1, objects, *x.shape[-2:]), f))


def test_decoder_split_matches_stm_input_and_one_frame_broadcasts_over_objects():
    """The decoder's first convolution over [readout, value] is split into a per-object readout term and
    a per-frame value term; a one-frame batch's terms broadcast over its objects instead of being copied."""
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f = net.encode_frame(x)
        k, v = _one_frame_memory(net, x, f, 3)
        logits = net.segment(x, k, v, f)  # (1, 3, H, W), broadcast frame terms
        dec = net.decoder
        readout = net.read(net.affinity(k, f.key), v).reshape(3, -1, 2, 3)
        value = net.value_q(f.f16).expand(3, -1, -1, -1)
        y = dec.res_in(dec.conv_in(torch.cat([readout, value], 1)))  # STM's decoder input, whole
        s8, s4 = (t.expand(3, -1, -1, -1) for t in f.decoder_part[1:])
        y = dec.rf4(s4, dec.rf8(s8, y))
        y = torch.nn.functional.interpolate(dec.pred(torch.relu(y)), scale_factor=4, mode="bilinear")[:, 0]
    assert logits.shape == (1, 3, 32, 48)
    assert torch.allclose(logits[0], y, atol=1e-5)


def test_segment_without_upsampling_gives_the_decoder_s_own_logits():
    """The logits at 1/4 that gradient correction compares are those the full-size ones are bilinearly
    upsampled from."""
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f = net.encode_frame(x)
        k, v = _one_frame_memory(net, x, f, 2)
        small, full = net.segment(x, k, v, f, upsample=False), net.segment(x, k, v, f)
    assert small.shape == (1, 2, 8, 12) and full.shape == (1, 2, 32, 48)
    assert torch.allclose(torch.nn.functional.interpolate(small, scale_factor=4, mode="bilinear"), full, atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True])
def test_a_single_object_is_memorised_as_with_an_empty_second_channel(frozen):
    """One object's second mask channel (the other objects) is empty, so memorize feeds the mask alone to
    the first convolution: the value must equal the two-channel one, and so must its gradient."""
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    if frozen:
        net.for_inference()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        f = net.encode_frame(x)
    m = torch.rand(2, 1, 32, 48, requires_grad=True)
    value = net.memorize(x, m, f)[1]  # (2, 1, Cv, h, w)
    both = torch.cat([m, torch.zeros_like(m)], 1)  # (2, 2, H, W): [mask, no other object]
    want = net.mask_encoder(both, f.image_part)
    assert torch.allclose(value[:, 0], want, atol=1e-5)
    g = torch.randn_like(want)
    (got,) = torch.autograd.grad(value[:, 0], m, g)
    (ref,) = torch.autograd.grad(want, m, g)
    assert torch.allclose(got, ref, atol=1e-5)


def test_memorize_without_features_matches_with_features():
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x, m = torch.rand(1, 3, 32, 48), torch.rand(1, 2, 32, 48)
    with torch.no_grad():
        a = net.memorize(x, m)
        b = net.memorize(x, m, net.encode_frame(x))
    assert torch.allclose(a[1], b[1])


def _two_frame_memory(net, x, f, objects=3):
    k1, v1 = _one_frame_memory(net, x, f, objects)
    k2, v2 = _one_frame_memory(net, x, f, objects)
    return torch.cat([k1, k2], -1), torch.cat([v1, v2], -1), v1.shape[-1]


def test_invalid_memory_frames_are_left_out_per_object():
    """An object added later must read only the memory frames that hold it; objects that hold the same
    frames share one softmax, so the read equals one done with only those frames."""
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f = net.encode_frame(x)
        keys, values, hw = _two_frame_memory(net, x, f)
        valid = torch.ones(1, 3, 2 * hw, dtype=torch.bool)
        valid[0, 1:, :hw] = False  # objects 2 and 3 were added on the second frame
        masked = net.segment(x, keys, values, f, valid=valid)
        only_second = net.segment(x, keys[..., hw:], values[..., hw:], f)
        full = net.segment(x, keys, values, f)
    assert torch.allclose(masked[:, 1:], only_second[:, 1:], atol=1e-5)
    assert torch.allclose(masked[:, 0], full[:, 0], atol=1e-5)
    assert not torch.allclose(masked[:, 1], full[:, 1])


def test_memory_read_is_stm_s_softmax_over_memory_positions():
    """Each query position reads sum_j softmax_j(k_j . q / sqrt(Ck)) v_j over the memory positions j an
    object holds (float64 reference), whatever layout the read takes its weights in."""
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    keys, values, query = torch.randn(1, 1, 64, 60), torch.randn(1, 3, 128, 60), torch.randn(1, 64, 4, 6)
    valid = torch.ones(1, 3, 60, dtype=torch.bool)
    valid[0, 1, :24] = False  # object 2 holds the last 36 positions
    logits = torch.einsum("cn,cq->nq", keys[0, 0].double(), query[0].flatten(1).double()) / 8.0  # (N, hw)
    for v in (None, valid):
        with torch.no_grad():
            got = net.read_memory(keys, values, query, v)  # (1, 3, 128, hw)
        for o in range(3):
            held = torch.ones(60, dtype=torch.bool) if v is None else v[0, o]
            p = torch.softmax(logits[held], dim=0)  # over the memory positions the object holds
            want = values[0, o][:, held].double() @ p
            assert torch.allclose(got[0, o].double(), want, atol=1e-5)


def test_encoder_in_place_activations_keep_values_and_gradients():
    """The Lite0 blocks clamp and add in place: the same features and the same gradients, for the input and
    the weights, as the blocks written out of place (batch norm as in training: frozen statistics)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    enc = CycleVOSNet().train().encoder

    def reference(x):
        x = F.relu6(enc._bn0(enc._conv_stem(x)))
        out = []
        for i, b in enumerate(enc._blocks):
            y = F.relu6(b._bn0(b._expand_conv(x))) if b.has_expand else x
            y = b._bn2(b._project_conv(F.relu6(b._bn1(b._depthwise_conv(y)))))
            x = x + y if b.residual else y
            if i in enc._taps:
                out.append(x)
        return out

    results, image = [], torch.randn(2, 3, 64, 96)
    for forward in (enc, reference):
        x = image.clone().requires_grad_(True)
        feats = forward(x)
        sum(
            (f * torch.randn_like(f, generator=torch.Generator().manual_seed(i))).sum() for i, f in enumerate(feats)
        ).backward()
        weight = enc._blocks[4]._expand_conv.weight
        results.append((feats, x.grad, weight.grad.clone()))
        weight.grad = None
    (fa, ga, wa), (fb, gb, wb) = results
    assert all(torch.equal(a, b) for a, b in zip(fa, fb))
    assert torch.allclose(ga, gb, atol=1e-6) and torch.allclose(wa, wb, atol=1e-6)


def test_an_object_without_memory_reads_nothing_and_spoils_nothing():
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f = net.encode_frame(x)
        keys, values, hw = _two_frame_memory(net, x, f, objects=2)
        valid = torch.ones(1, 2, 2 * hw, dtype=torch.bool)
        valid[0, 1] = False  # no memory frame holds object 2
        out = net.segment(x, keys, values, f, valid=valid)
        alone = net.segment(x, keys, values[:, :1], f)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, 0], alone[:, 0], atol=1e-5)


def test_soft_aggregation_is_stm_s_odds_product():
    """STM's soft aggregation: background prod(1 - p_i), each object p_i, both turned into odds p/(1-p)
    and normalised: softmax of their logits."""
    p = torch.tensor([0.9, 0.3, 0.05]).view(1, 3, 1, 1)
    bg = (1 - 0.9) * (1 - 0.3) * (1 - 0.05)
    odds = torch.tensor([bg / (1 - bg), 0.9 / 0.1, 0.3 / 0.7, 0.05 / 0.95])
    expected = odds / odds.sum()
    agg = soft_aggregate(p)[0, :, 0, 0]
    assert torch.allclose(agg, expected, atol=1e-6)
    assert agg.argmax() == 1  # the most likely object wins
    low = soft_aggregate(torch.full((1, 2, 1, 1), 0.01))[0, :, 0, 0]
    assert low[0] > 0.95  # nothing likely: background


@pytest.mark.parametrize("shape", [(3, 1, 15, 27), (2, 4, 1, 5)])
def test_decoder_upsampling_and_its_matrix_backward_match_interpolate(shape):
    """The decoder's x4 upsampling computes its gradient as two matrix products; both directions must be
    F.interpolate's, borders and one-pixel axes included."""
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(*shape[:2], shape[2] * 4, shape[3] * 4)
    ref = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    out = Upsample4.apply(x)
    (grad,) = torch.autograd.grad(out, x, g)
    assert torch.equal(out, ref)
    assert torch.allclose(grad, ref_grad, atol=1e-5)


def test_mask_loss_is_eq4():
    y = torch.zeros(1, 1, 4, 4)
    y[..., :2, :] = 1
    assert mask_loss(y, y).item() < 1e-4  # perfect prediction: BCE ~0, IoU 1
    p = torch.full_like(y, 0.5)
    bce = -torch.log(torch.tensor(0.5))
    iou = (8 * 0.5) / (8 * 1 + 8 * 0.5)
    assert abs(mask_loss(p, y, gamma=1.0).item() - (bce + 1 - iou).item()) < 1e-5
    assert abs(mask_loss(p, y, gamma=0.0).item() - bce.item()) < 1e-5


def test_mask_loss_soft_iou_has_min_and_max_values_and_gradient():
    """The soft IoU's sums of min and max come from one |pred - target|: loss and gradient must be those
    of torch.minimum / torch.maximum, ties (1/2 each way) and soft targets included."""
    torch.manual_seed(0)
    target = (torch.rand(2, 3, 8, 8) > 0.6).float()
    target[0, 0, :2] = 0.3  # soft target
    pred = torch.rand(2, 3, 8, 8)
    pred[1, 2, :3] = target[1, 2, :3]  # ties
    pred[0, 0, 0, :4] = 0.3
    pred.requires_grad_(True)
    p = pred.clamp(1e-6, 1 - 1e-6)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean(dim=(-2, -1))
    iou = (torch.minimum(pred, target).sum((-2, -1)) + 1e-6) / (torch.maximum(pred, target).sum((-2, -1)) + 1e-6)
    ref = (bce + 0.7 * (1 - iou)).mean()
    (ref_grad,) = torch.autograd.grad(ref, pred)
    loss = mask_loss(pred, target, gamma=0.7)
    (grad,) = torch.autograd.grad(loss, pred)
    assert abs(loss.item() - ref.item()) < 1e-6
    assert torch.allclose(grad, ref_grad, atol=1e-7, rtol=1e-5)


def test_aggregate_loss_has_the_value_and_gradient_of_the_autograd_chain():
    """aggregate_loss writes out the gradient of mask_loss(soft_aggregate(sigmoid(z))[:, 1:]) * O: it must
    match autograd's, with saturated logits (both clamps active), soft targets and a batch of two."""
    torch.manual_seed(0)
    z = torch.randn(2, 3, 12, 16, dtype=torch.float64) * 6
    z[0, 0, :3], z[0, 1, 3:5], z[1, 2, :, :4] = 40, -40, 25  # p = 1 and 0 to float64's precision
    target = (torch.rand(2, 3, 12, 16, dtype=torch.float64) > 0.6).double()
    target[1, 1] = torch.rand(12, 16, dtype=torch.float64)  # soft target
    for dtype in (torch.float64, torch.float32):  # float64: the formulas; float32: as used, rounding apart
        x = z.to(dtype).requires_grad_(True)
        t = target.to(dtype)
        ref = mask_loss(soft_aggregate(torch.sigmoid(x))[:, 1:], t, gamma=0.7) * 3
        (ref_grad,) = torch.autograd.grad(ref, x)
        loss = _AggregateLoss.apply(x, t, 0.7) if dtype == torch.float64 else aggregate_loss(x, t, gamma=0.7)
        (grad,) = torch.autograd.grad(loss, x)
        assert abs(loss.item() - ref.item()) < 1e-5 * ref.item()
        # float32: 1 - p near saturation is rounded differently by the two chains (both are off float64's
        # gradient there by up to 30 % of its largest value)
        tol = 1e-7 if dtype == torch.float64 else 1e-2
        assert torch.allclose(grad, ref_grad, rtol=tol, atol=tol * ref_grad.abs().max().item())


def test_config_round_trip():
    cfg = ModelConfig(key_dim=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_inference_network_folds_batchnorm_freezes_weights_and_refuses_training(tmp_path):
    """Inference folds the encoder's batch norms into its convolutions (same features and masks up to
    rounding, for any statistics) and freezes the weights; such a network is neither trained nor saved."""
    from comfyui_cyclevos.model.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(1)
    net = CycleVOSNet()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # statistics far from identity, as trained ones are
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.01, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    save_checkpoint(tmp_path / "n.pt", net)
    plain = load_checkpoint(tmp_path / "n.pt", for_inference=False)
    folded = load_checkpoint(tmp_path / "n.pt")
    assert folded.inference_only and not any(p.requires_grad for p in folded.parameters())
    assert all(p.requires_grad for p in plain.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.encoder.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.encoder.modules())
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(plain.encoder(x), folded.encoder(x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), float((a - b).abs().max())
    with pytest.raises(RuntimeError, match="for_inference=False"):
        folded.train()
    with pytest.raises(ValueError, match="for_inference=False"):
        save_checkpoint(tmp_path / "again.pt", folded)
    plain.train()  # the one loaded for training trains as before


def test_split_convolution_halves_follow_a_frozen_weight_that_changes():
    """The frozen halves are cached; they must follow the weight when it is reloaded or moved, and a cache
    made under inference mode must still serve gradient correction (which records a graph)."""
    torch.manual_seed(0)
    conv = SplitConv2d(3, 5, 4)
    a, b = torch.rand(1, 3, 6, 8), torch.rand(1, 2, 6, 8)

    def agrees():
        return torch.allclose(conv.first(a) + conv.second(b), conv(torch.cat([a, b], 1)), atol=1e-6)

    assert agrees()
    conv.first(a).sum().backward()  # trainable: the gradient reaches the whole weight's first half only
    assert conv.weight.grad[:, 3:].abs().max() == 0 and conv.weight.grad[:, :3].abs().max() > 0
    conv.requires_grad_(False)
    with torch.inference_mode():
        assert agrees()  # the halves are made here, under inference mode
    assert all(h.is_contiguous() for h in conv.halves())
    x = a.clone().requires_grad_(True)
    conv.first(x).sum().backward()  # a graph through halves made under inference mode
    assert x.grad is not None
    conv.load_state_dict({k: torch.rand_like(v) for k, v in conv.state_dict().items()})
    assert agrees()  # reloaded in place: the halves follow
    conv.to(memory_format=torch.channels_last)
    assert agrees() and all(h.is_contiguous(memory_format=torch.channels_last) for h in conv.halves())
