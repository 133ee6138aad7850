"""Dev J&F (DAVIS protocol) with and without gradient correction, and the speed of each.

    python benchmarks/quality.py [--weights PATH] [--data ../shared/data/davis2016/dev-480p] [--gc-rate A]

Needs the DAVIS-2016 dev sequences beside the repo (../shared/data). Prints one line.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from machine import machine

from comfyui_cyclevos.checkpoint import checkpoint_meta, default_weights_path, load_checkpoint
from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig
from comfyui_cyclevos.davis import list_sequences
from comfyui_cyclevos.device import pick_device
from comfyui_cyclevos.evaluate import evaluate_folders
from comfyui_cyclevos.runner import segment_davis

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016" / "dev-480p"


def score(net, data: Path, gc: bool, alpha: float, device, size: int = 240) -> tuple[float, float, float, float]:
    names = list_sequences(data)
    cfg = InferenceConfig(size=size, correction=CorrectionConfig(enabled=gc, alpha=alpha))
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        stats = segment_davis(net, data, names, tmp, cfg, device)
        ev = evaluate_folders(tmp, data, names)
    return ev.j_mean, ev.f_mean, ev.jf_mean, stats.fps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--gc-rate", type=float, default=None)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = pick_device(a.device)
    weights = a.weights or default_weights_path()
    net = load_checkpoint(weights, device)
    alpha = a.gc_rate if a.gc_rate is not None else float(checkpoint_meta(weights).get("gc_rate", CorrectionConfig.alpha))
    off = score(net, a.data, False, alpha, device)
    on = score(net, a.data, True, alpha, device)
    print(
        f"quality {a.data.name} ({len(list_sequences(a.data))} sequences, {weights.name}): "
        f"without GC J {off[0]:.3f} F {off[1]:.3f} J&F {off[2]:.3f} ({off[3]:.1f} fps); "
        f"with GC (alpha {alpha:g}) J {on[0]:.3f} F {on[1]:.3f} J&F {on[2]:.3f} ({on[3]:.1f} fps) | {machine()}"
    )


if __name__ == "__main__":
    main()
