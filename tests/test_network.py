import torch

from comfyui_cyclevos.config import ModelConfig
from comfyui_cyclevos.network import CycleVOSNet, soft_aggregate
from comfyui_cyclevos.losses import mask_loss


def test_shapes_through_memorize_and_segment():
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(2, 3, 64, 96)
    masks = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        f = net.encode_frame(x)
        assert f.key.shape == (2, 64, 4, 6) and f.value.shape == (2, 128, 4, 6)
        assert f.f8.shape[-2:] == (8, 12) and f.f4.shape[-2:] == (16, 24)
        k, v = net.memorize(x, masks, f)
        assert k.shape == (2, 1, 64, 4, 6)  # fused encoder: one key shared by all objects
        assert v.shape == (2, 3, 128, 4, 6)
        logits = net.segment(x, torch.stack([k, k], 2), torch.stack([v, v], 2), f)
        assert logits.shape == (2, 3, 64, 96)


def test_memorize_without_features_matches_with_features():
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x, m = torch.rand(1, 3, 32, 48), torch.rand(1, 2, 32, 48)
    with torch.no_grad():
        a = net.memorize(x, m)
        b = net.memorize(x, m, net.encode_frame(x))
    assert torch.allclose(a[1], b[1])


def test_invalid_memory_frames_are_left_out_per_object():
    """An object added later must read only the memory frames that hold it."""
    torch.manual_seed(0)
    net = CycleVOSNet().eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        f = net.encode_frame(x)
        k1, v1 = net.memorize(x, torch.rand(1, 2, 32, 48), f)
        k2, v2 = net.memorize(x, torch.rand(1, 2, 32, 48), f)
        keys, values = torch.stack([k1, k2], 2), torch.stack([v1, v2], 2)
        valid = torch.tensor([[[True, True], [False, True]]])
        masked = net.segment(x, keys, values, f, valid=valid)
        only_second = net.segment(x, keys[:, :, 1:], values[:, :, 1:], f)
        full = net.segment(x, keys, values, f)
    assert torch.allclose(masked[:, 1], only_second[:, 1], atol=1e-5)
    assert torch.allclose(masked[:, 0], full[:, 0])
    assert not torch.allclose(masked[:, 1], full[:, 1])


def test_soft_aggregation_sums_to_one():
    p = torch.rand(2, 4, 8, 8)
    agg = soft_aggregate(p)
    assert agg.shape == (2, 5, 8, 8)
    assert torch.allclose(agg.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    assert (agg >= 0).all()


def test_mask_loss_is_eq4():
    y = torch.zeros(1, 1, 4, 4)
    y[..., :2, :] = 1
    assert mask_loss(y, y).item() < 1e-4  # perfect prediction: BCE ~0, IoU 1
    p = torch.full_like(y, 0.5)
    bce = -torch.log(torch.tensor(0.5))
    iou = (8 * 0.5) / (8 * 1 + 8 * 0.5)
    assert abs(mask_loss(p, y, gamma=1.0).item() - (bce + 1 - iou).item()) < 1e-5
    assert abs(mask_loss(p, y, gamma=0.0).item() - bce.item()) < 1e-5


def test_config_round_trip():
    cfg = ModelConfig(key_dim=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
