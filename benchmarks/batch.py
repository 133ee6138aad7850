"""Videos per hour for a batch of K copies of the bundled demo clip: one ``cyclevos batch`` process (the
network loaded once) against one ``cyclevos segment`` process per video (the shell loop it replaces).

    python benchmarks/batch.py [-k 4] [-- SEGMENT OPTIONS, e.g. --no-gc --size 240 --weights PATH]

Both ways run as subprocesses from a cold start, with the same options, on the same copies (symlinks
to bear.mp4 and bear-mask.png); both include decoding and writing the PNGs. The difference is what the
loop pays per video: starting Python, importing torch, loading the checkpoint, and a cold engine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import avx512, machine

from comfyui_cyclevos.demo import demo_clip

ROOT = Path(__file__).resolve().parent.parent


def cyclevos(*args: str) -> float:
    """Seconds a ``cyclevos`` subprocess takes; it must succeed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "comfyui_cyclevos.cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"cyclevos {' '.join(args[:1])} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", type=int, default=4, help="copies of the demo clip (default 4)")
    ap.add_argument("options", nargs="*", help="options for both ways (after --), as cyclevos segment takes them")
    args = ap.parse_args()
    clip, mask = demo_clip()
    with tempfile.TemporaryDirectory(prefix="cyclevos-batch-bench-") as tmp:
        shots = Path(tmp) / "shots"
        shots.mkdir()
        for i in range(args.k):
            (shots / f"bear{i:03d}.mp4").symlink_to(clip)
            (shots / f"bear{i:03d}.png").symlink_to(mask)
        one = cyclevos("batch", str(shots), "--out", str(Path(tmp) / "batch"), *args.options)
        loop = 0.0
        for i in range(args.k):
            video, m = shots / f"bear{i:03d}.mp4", shots / f"bear{i:03d}.png"
            loop += cyclevos(
                "segment", str(video), "--mask", str(m), "--out", str(Path(tmp) / "loop" / video.stem), *args.options
            )
    print(f"machine: {machine()}")
    print(f"AVX-512: {avx512()}")
    print(f"K = {args.k} copies of {clip.name}, options: {' '.join(args.options) or '(defaults)'}")
    print(f"one process (cyclevos batch):       {args.k / one * 3600:7.1f} videos/hour ({one:.1f} s)")
    print(f"one process per video (shell loop): {args.k / loop * 3600:7.1f} videos/hour ({loop:.1f} s)")
    print(f"speed-up: {loop / one:.2f}x")


if __name__ == "__main__":
    main()
