"""Peak memory of the engine on a short and a long generated video: it must not grow with the length.

    python benchmarks/memory.py [--weights PATH] [--short 150] [--long 1200] [--host-allocator]

Each length runs in its own process (peak RSS is per process); frames are generated one at a time at
427x240 (a textured background with two moving objects), so the video itself never sits in memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from machine import ALLOCATOR_HELP, machine, set_allocator


def frame(t: int, H: int = 240, W: int = 427) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    bg = (rng.random((H, W, 3)) * 80 + 60).astype(np.uint8)
    ids = np.zeros((H, W), np.uint8)
    for o, colour in enumerate([(220, 40, 40), (40, 60, 220)]):
        x = int((W - 60) * (0.5 + 0.5 * np.sin(0.05 * t + 2 * o)))
        y = 40 + 100 * o
        bg[y : y + 50, x : x + 60] = colour
        ids[y : y + 50, x : x + 60] = o + 1
    return bg, ids


def child(weights: str | None, n: int, host_allocator: bool) -> None:
    set_allocator(host_allocator)
    from comfyui_cyclevos.inference.engine import InferenceCore
    from comfyui_cyclevos.model.checkpoint import default_weights_path, load_checkpoint

    net = load_checkpoint(weights or default_weights_path())
    eng = InferenceCore(net)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in range(n):
            f, ids = frame(t)
            eng.step(f, ids if t == 0 else None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"frames": n, "peak_mb": peak_mb, "memory_entries": len(eng.memory), "seconds": time.perf_counter() - t0}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--short", type=int, default=150)
    ap.add_argument("--long", type=int, default=1200)
    ap.add_argument("--host-allocator", action="store_true", help=ALLOCATOR_HELP)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        return child(a.weights, a.child, a.host_allocator)
    set_allocator(a.host_allocator)  # for the line printed: each child sets its own
    res = []
    for n in (a.short, a.long):
        cmd = [sys.executable, __file__, "--child", str(n)] + (["--weights", a.weights] if a.weights else [])
        cmd += ["--host-allocator"] if a.host_allocator else []
        res.append(
            json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        )

    s, l = res
    growth = l["peak_mb"] / s["peak_mb"] - 1
    print(
        f"memory 427x240, 2 objects, correction on: {s['frames']} frames peak {s['peak_mb']:.0f} MB, "
        f"{l['frames']} frames peak {l['peak_mb']:.0f} MB (growth {growth * 100:+.1f}%, memory entries {s['memory_entries']} vs {l['memory_entries']}) | {machine()}"
    )


if __name__ == "__main__":
    main()
