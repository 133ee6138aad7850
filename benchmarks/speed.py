"""Frames per second at 240p for 1 and 5 objects, with and without gradient correction, in one run.

    python benchmarks/speed.py [--weights PATH] [--frames 60] [--device auto] [--host-allocator]
    python benchmarks/speed.py --arch lite0,resnet18,resnet50     # architectures side by side
    python benchmarks/speed.py --trainable                       # also the weights as loaded for training

With --arch, each architecture runs with random weights (speed does not depend on them): lite0 with the
shipped widths, the ResNets as the paper's STM (key 128, value 512, decoder 256).

Uses the bundled demo clip (426x240); the 5-object case splits its mask into 5 vertical bands. Times the
engine's ``step`` only (decoding and writing excluded), after 3 warm-up frames; with and without
correction step alternately. Freed memory is kept as the ``cyclevos`` command keeps it
(``allocator.keep_freed_memory``); ``--host-allocator`` leaves glibc's defaults, as in ComfyUI.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from machine import ALLOCATOR_HELP, machine, set_allocator

from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig, ModelConfig
from comfyui_cyclevos.demo import demo_clip
from comfyui_cyclevos.inference.engine import InferenceCore
from comfyui_cyclevos.media.frames import open_frames
from comfyui_cyclevos.media.masks import read_mask
from comfyui_cyclevos.model.checkpoint import default_weights_path, load_checkpoint
from comfyui_cyclevos.model.network import CycleVOSNet
from comfyui_cyclevos.runtime.device import pick_device
from comfyui_cyclevos.runtime.precision import pick_precision


def five_objects(mask: np.ndarray) -> np.ndarray:
    cols = np.nonzero(mask.any(0))[0]
    edges = np.linspace(cols.min(), cols.max() + 1, 6).astype(int)
    out = np.zeros_like(mask)
    for i in range(5):
        band = np.zeros_like(mask, dtype=bool)
        band[:, edges[i] : edges[i + 1]] = True
        out[(mask > 0) & band] = i + 1
    return out


def fps_without_and_with_gc(net, frames, mask, device, precision: str, warmup: int = 3) -> tuple[float, float]:
    """Frames per second of the engine without and with gradient correction. The two engines step
    alternately, frame by frame, so that this VM's drift (up to a third between runs) falls on both
    alike and the slowdown compares like with like."""
    engines = [
        InferenceCore(net, InferenceConfig(precision=precision, correction=CorrectionConfig(enabled=gc)), device)
        for gc in (False, True)
    ]
    seconds = [0.0, 0.0]
    for i, frame in enumerate(frames):
        for j, eng in enumerate(engines):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            eng.step(frame, mask if i == 0 else None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > warmup:
                seconds[j] += time.perf_counter() - t
    timed = len(frames) - 1 - warmup
    return timed / seconds[0], timed / seconds[1]


def architecture(name: str) -> ModelConfig:
    if name == "lite0":
        return ModelConfig()
    return ModelConfig(encoder=name, memory_encoder="stm", key_dim=128, value_dim=512, decoder_dims=(256, 256, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--arch", default=None, help="comma-separated architectures to compare with random weights")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="comma-separated: auto, fp32, bf16, fp16")
    ap.add_argument(
        "--trainable",
        action="store_true",
        help="also time the checkpoint as loaded for training (batch norm kept, weights trainable), first",
    )
    ap.add_argument("--host-allocator", action="store_true", help=ALLOCATOR_HELP)
    a = ap.parse_args()
    set_allocator(a.host_allocator)
    if a.frames < 5:
        ap.error(
            f"--frames {a.frames} leaves nothing to time after the first frame and 3 warm-up frames: give at least 5"
        )
    device = pick_device(a.device)
    if a.arch:
        nets = [(name, CycleVOSNet(architecture(name)).to(device).eval()) for name in a.arch.split(",")]
    else:
        weights = a.weights or default_weights_path()
        nets = [(weights.name, load_checkpoint(weights, device))]
        if a.trainable:
            nets.insert(0, (weights.name + " trainable", load_checkpoint(weights, device, for_inference=False)))
    clip, mask_path = demo_clip()
    frames = [f for _, f in zip(range(a.frames), (fr for _, fr in open_frames(clip)))]
    one = read_mask(mask_path)
    five = five_objects(one)
    for (label, net), precision in ((n, p) for n in nets for p in a.precision.split(",")):
        name = pick_precision(device, precision).name
        with torch.inference_mode():
            r = dict(zip(("1", "1+gc"), fps_without_and_with_gc(net, frames, one, device, precision)))
            r.update(zip(("5", "5+gc"), fps_without_and_with_gc(net, frames, five, device, precision)))
        print(
            f"speed 240p ({net.config.encoder}, {label}, {name}): 1 object {r['1']:.1f} fps, with GC {r['1+gc']:.1f} fps "
            f"(GC slowdown {r['1'] / r['1+gc']:.2f}x); 5 objects {r['5']:.1f} fps, with GC {r['5+gc']:.1f} fps "
            f"(GC slowdown {r['5'] / r['5+gc']:.2f}x) | {machine()}",
            flush=True,
        )


if __name__ == "__main__":
    main()
