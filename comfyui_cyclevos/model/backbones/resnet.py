"""ResNet-18 / ResNet-50 truncated after ``layer3`` (res4, stride 16), written in the project.

Parameter names follow torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``, ...)
so that an ImageNet torchvision state_dict loads strictly, and STM / STM-cycle checkpoints map onto it
one name for one name. With ``in_extra=2`` it is STM's memory encoder: two extra 7x7 stems, ``conv1_m``
(the object's mask) and ``conv1_o`` (the second mask channel), are added to ``conv1`` before ``bn1``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import WeightsError

# name -> (block kind, blocks per stage for layer1..layer3); layer4 is not built (stride 32 is unused)
_ARCHS = {"resnet18": ("basic", (2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6))}
_EXPANSION = {"basic": 1, "bottleneck": 4}


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); the stride sits on the first."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels), stride on the 3x3 as in torchvision (ResNet v1.5)."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """Returns (f4, f8, f16) = (layer1, layer2, layer3) outputs; ``channels`` gives their widths."""

    def __init__(self, name: str, in_extra: int = 0):
        super().__init__()
        if name not in _ARCHS:
            raise ValueError(f"unknown ResNet {name!r}: choose {', '.join(_ARCHS)}")
        if in_extra not in (0, 2):
            raise ValueError(f"in_extra must be 0 (query encoder) or 2 (STM memory encoder), not {in_extra}")
        self.name = name
        self.in_extra = in_extra
        kind, repeats = _ARCHS[name]
        exp = _EXPANSION[kind]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        if in_extra:
            self.conv1_m = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            self.conv1_o = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256), repeats, (1, 2, 2)), start=1):
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if j == 0 and (s != 1 or cin != planes * exp):
                    down = nn.Sequential(nn.Conv2d(cin, planes * exp, 1, s, bias=False), nn.BatchNorm2d(planes * exp))
                block = _BasicBlock if kind == "basic" else _Bottleneck
                blocks.append(block(cin, planes, s, down))
                cin = planes * exp
            setattr(self, f"layer{i}", nn.Sequential(*blocks))

    @property
    def channels(self) -> tuple[int, int, int]:
        """(C4, C8, C16): (64, 128, 256) for resnet18, (256, 512, 1024) for resnet50."""
        e = _EXPANSION[_ARCHS[self.name][0]]
        return (64 * e, 128 * e, 256 * e)

    def forward(
        self, x: torch.Tensor, extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: normalised frames (N, 3, H, W); extra: (N, 2, H, W) = [mask, second mask] when in_extra."""
        y = self.conv1(x)  # (N, 64, H/2, W/2)
        if self.in_extra:
            if extra is None or extra.shape[1] != 2:
                raise ValueError("the STM memory encoder needs extra = (N, 2, H, W) [mask, second mask]")
            y = y + self.conv1_m(extra[:, :1]) + self.conv1_o(extra[:, 1:2])
        elif extra is not None:
            raise ValueError("this encoder takes no mask input (in_extra=0)")
        y = self.maxpool(F.relu(self.bn1(y)))  # (N, 64, H/4, W/4)
        f4 = self.layer1(y)  # (N, C4, H/4, W/4)
        f8 = self.layer2(f4)  # (N, C8, H/8, W/8)
        f16 = self.layer3(f8)  # (N, C16, H/16, W/16)
        return f4, f8, f16

    def early_modules(self) -> list[nn.Module]:
        """The layers at 1/2 and 1/4 (stem and layer1), as ``EfficientNetLite0.early_modules``."""
        return [self.conv1, self.bn1, self.layer1]

    def load_pretrained(self, path: str | Path) -> list[str]:
        """Load an ImageNet torchvision-format state_dict brought by the user (nothing downloads).

        Strict except for three named cases: ``layer4.*`` and ``fc.*`` are dropped (this encoder stops at
        stride 16), ``conv1_m`` / ``conv1_o`` of a memory encoder keep their initialisation (ImageNet has
        no mask input), and BatchNorm ``num_batches_tracked`` counters missing from old torchvision files
        start at 0 (a counter only; eval-mode BatchNorm never reads it). Returns the dropped key names.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightsError(
                f"cannot read ImageNet weights {path} ({type(e).__name__}): expected a torchvision {self.name} state_dict"
            ) from None
        if not isinstance(state, dict):
            raise WeightsError(f"{path} is not a state_dict: expected a torchvision {self.name} state_dict")
        dropped = sorted(k for k in state if k.startswith(("layer4.", "fc.")))
        keep = {k: v for k, v in state.items() if k not in dropped}
        own = self.state_dict()
        own_extra = {k for k in own if k.startswith(("conv1_m.", "conv1_o."))}
        for k in own:
            if k.endswith("num_batches_tracked") and k not in keep and k not in own_extra:
                keep[k] = torch.zeros((), dtype=torch.long)
        unknown = sorted(set(keep) - set(own))
        missing = sorted(set(own) - set(keep) - own_extra)
        if unknown or missing:
            raise WeightsError(
                f"{path} is not a torchvision {self.name} state_dict: unknown keys {unknown[:5]}, missing keys {missing[:5]}"
            )
        bad = [k for k in keep if keep[k].shape != own[k].shape]
        if bad:
            raise WeightsError(
                f"{path} does not fit {self.name}: {bad[0]} has shape {tuple(keep[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}"
            )
        result = self.load_state_dict(keep, strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) == own_extra, result
        return dropped
