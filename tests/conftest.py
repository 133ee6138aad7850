"""Shared fixtures and helpers: a tiny random-weight checkpoint, small generated clips, and random state_dicts
with the released STM / STM-cycle / torchvision key names and shapes (no shared data needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; a missing folder fails the test (it is never skipped)."""
    p = SHARED_DATA.joinpath(*parts)
    assert p.exists(), f"{p} is missing: these tests need the shared DAVIS data beside the repo"
    return p


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    from comfyui_cyclevos.model.checkpoint import save_checkpoint
    from comfyui_cyclevos.model.network import CycleVOSNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, CycleVOSNet())
    return path


def moving_square_clip(n: int = 8, H: int = 64, W: int = 96, objects: int = 1):
    """Frames (n, H, W, 3) uint8 of coloured squares moving on a textured background, and their id maps."""
    rng = np.random.default_rng(0)
    bg = (rng.random((H, W, 3)) * 60 + 40).astype(np.uint8)
    frames, labels = [], []
    colours = [(230, 40, 40), (40, 220, 60), (50, 80, 240)]
    for t in range(n):
        f, y = bg.copy(), np.zeros((H, W), np.uint8)
        for o in range(objects):
            r, c = 8 + 14 * o, 10 + 3 * t + 20 * o
            f[r : r + 14, c : c + 14] = colours[o]
            y[r : r + 14, c : c + 14] = o + 1
        frames.append(f)
        labels.append(y)
    return np.stack(frames), np.stack(labels)


@pytest.fixture
def clip_folder(tmp_path) -> tuple[Path, Path]:
    """A folder of 8 PNG frames and a first-frame palette mask with two objects."""
    from PIL import Image

    from comfyui_cyclevos.media.writers import write_palette_png

    frames, labels = moving_square_clip(objects=2)
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"f{i:03d}.png")
    mask = tmp_path / "mask.png"
    write_palette_png(mask, labels[0])
    return d, mask


# ---- the released STM / STM-cycle layouts (key names and shapes recorded in tests/data) ----

DATA = Path(__file__).parent / "data"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def shapes(name: str) -> dict[str, list[int]]:
    return json.loads((DATA / f"keys_{name}.json").read_text())["shapes"]


def random_state(spec: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with exactly the recorded names and shapes, scaled so a forward stays finite."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in spec.items():
        last = k.rsplit(".", 1)[-1]
        if last == "num_batches_tracked":
            out[k] = torch.tensor(5, dtype=torch.long)
        elif last in IMAGENET:  # the originals' normalisation buffers
            out[k] = torch.tensor(IMAGENET[last]).view(shape)
        elif last == "running_var" or (last == "weight" and len(shape) == 1):
            out[k] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 1:
            out[k] = torch.randn(shape, generator=g) * 0.1
        else:
            out[k] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return out


def write_source(state: dict[str, torch.Tensor], path: Path, source: str) -> Path:
    """The released files' layouts: STM a plain (2019, legacy-serialised) state_dict, STM-cycle a dict."""
    if source == "stm":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save({"epoch": 240, "state_dict": state, "max_skip": [25, 5]}, path)
    return path
