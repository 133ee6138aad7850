"""Dev J&F (DAVIS protocol) with and without gradient correction, and the speed of each.

    python benchmarks/quality.py [--weights PATH] [--data ../shared/data/davis2016/dev-480p] [--gc-rate A]
    python benchmarks/quality.py --sweep 150,1500,5000    # J&F with correction for each rate alpha
    python benchmarks/quality.py --sweep 150,300 --sweep-steps 3,5,10   # ... for each steps N and rate
    python benchmarks/quality.py --soft-memory            # memorise probabilities, as STM does
    python benchmarks/quality.py --precision fp32,bf16    # a line per precision (auto: the engine's choice)
    python benchmarks/quality.py --size 240,360,480       # a line per processing size
    python benchmarks/quality.py --precision fp32 --emulate bf16   # bf16 (or fp16) convolutions emulated in fp32
    python benchmarks/quality.py --adapt 0,15,30,60     # test-time adaptation: J&F, seconds, per sequence
    python benchmarks/quality.py --adapt 30 --adapt-seeds 0,1,2   # ... and its spread over seeds

Needs the DAVIS-2016 dev sequences beside the repo (../shared/data). Prints one line (a line per rate
with --sweep: how the shipped rate was chosen).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from machine import ALLOCATOR_HELP, machine, set_allocator
from precision_emulation import DTYPES, rounded_convolutions

from comfyui_cyclevos.config import AdaptConfig, CorrectionConfig, GuardConfig, InferenceConfig, MemoryConfig
from comfyui_cyclevos.evaluation.evaluate import evaluate_folders
from comfyui_cyclevos.media.davis import list_sequences
from comfyui_cyclevos.model.checkpoint import checkpoint_meta, default_weights_path, load_checkpoint
from comfyui_cyclevos.runner import segment_davis
from comfyui_cyclevos.runtime.device import pick_device
from comfyui_cyclevos.runtime.precision import pick_precision

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016" / "dev-480p"


class Score(NamedTuple):
    j: float
    f: float
    jf: float
    fps: float  # after adaptation
    adapt_seconds: float  # mean per sequence, 0 without adaptation
    frames: int  # of all sequences


def score(net, data: Path, cfg: InferenceConfig, device, per_sequence: dict | None = None) -> Score:
    """Segment every sequence of ``data`` with ``cfg`` and score it. ``per_sequence`` gets
    {name: (J&F, adaptation seconds, the network used)}."""
    names = list_sequences(data)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        stats = segment_davis(net, data, names, tmp, config=cfg, device=device)
        ev = evaluate_folders(tmp, data, names)
        runs = {n: json.loads((Path(tmp) / n / "cyclevos.json").read_text()).get("adaptation", {}) for n in names}
    if per_sequence is not None:
        for s in ev.sequences:
            run = runs[s.name]
            per_sequence[s.name] = (s.jf_mean, run.get("seconds", 0.0), run.get("used", "original"))
    adapt_seconds = sum(r.get("seconds", 0.0) for r in runs.values()) / len(names)
    return Score(ev.j_mean, ev.f_mean, ev.jf_mean, stats.fps, adapt_seconds, stats.frames)


def gc_config(
    enabled: bool,
    alpha: float,
    hard_memory: bool = True,
    precision: str = "auto",
    size: int = 240,
    steps: int = CorrectionConfig.steps,
) -> InferenceConfig:
    return InferenceConfig(
        size=size,
        precision=precision,
        memory=MemoryConfig(hard=hard_memory),
        correction=CorrectionConfig(enabled=enabled, rate=alpha, steps=steps),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--gc-rate", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sweep", default=None, help="comma-separated correction rates to compare")
    ap.add_argument("--sweep-steps", default=str(CorrectionConfig.steps), help="with --sweep: comma-separated steps N")
    ap.add_argument(
        "--soft-memory", action="store_true", help="memorise probabilities, not label maps (MemoryConfig.hard=False)"
    )
    ap.add_argument(
        "--precision", default="auto", help="comma-separated precisions (auto, fp32, bf16, fp16): a line each"
    )
    ap.add_argument("--size", default="240", help="comma-separated processing sizes: a line each")
    ap.add_argument(
        "--emulate",
        choices=sorted(DTYPES),
        default=None,
        help="round every convolution to bf16 or fp16 in float32 (precision_emulation.py): their quality where they do not run",
    )
    ap.add_argument(
        "--adapt",
        default=None,
        help="comma-separated test-time adaptation steps (e.g. 0,15,30,60): a line each, with and without correction, "
        "seconds of adaptation per video and frames/s of the rest, then J&F per sequence",
    )
    ap.add_argument("--adapt-rate", type=float, default=AdaptConfig.rate)
    ap.add_argument("--adapt-batch", type=int, default=AdaptConfig.batch, help="clips per adaptation step")
    ap.add_argument(
        "--adapt-seeds", default="0", help="comma-separated seeds: a line each (with GC) and their mean, the spread"
    )
    ap.add_argument("--no-adapt-guard", action="store_true", help="keep the adapted network whatever the guard says")
    ap.add_argument("--host-allocator", action="store_true", help=ALLOCATOR_HELP)
    a = ap.parse_args()
    set_allocator(a.host_allocator)
    with rounded_convolutions(a.emulate) if a.emulate else contextlib.nullcontext():
        run(a)


def run(a: argparse.Namespace) -> None:
    emulated = f", {a.emulate} convolutions emulated" if a.emulate else ""
    device = pick_device(a.device)
    weights = a.weights or default_weights_path()
    net = load_checkpoint(weights, device)
    if a.sweep:
        for steps in (int(x) for x in a.sweep_steps.split(",")):
            for alpha in (float(x) for x in a.sweep.split(",")):
                s = score(net, a.data, gc_config(True, alpha, not a.soft_memory, steps=steps), device)
                print(
                    f"quality {a.data.name} with GC N {steps} alpha {alpha:g}{' soft memory' if a.soft_memory else ''}{emulated}: "
                    f"J {s.j:.3f} F {s.f:.3f} J&F {s.jf:.3f} ({s.fps:.1f} fps)",
                    flush=True,
                )
        return
    alpha = (
        a.gc_rate if a.gc_rate is not None else float(checkpoint_meta(weights).get("gc_rate", CorrectionConfig.rate))
    )
    if a.adapt is not None:
        adapt_rows(a, net, weights, alpha, device)
        return
    for precision in a.precision.split(","):
        for size in (int(x) for x in a.size.split(",")):
            name = pick_precision(device, precision).name
            off = score(net, a.data, gc_config(False, alpha, not a.soft_memory, precision, size), device)
            on = score(net, a.data, gc_config(True, alpha, not a.soft_memory, precision, size), device)
            print(
                f"quality {a.data.name} ({len(list_sequences(a.data))} sequences, {weights.name}, size {size}, {name}{emulated}): "
                f"without GC J {off.j:.3f} F {off.f:.3f} J&F {off.jf:.3f} ({off.fps:.1f} fps); "
                f"with GC (alpha {alpha:g}{', soft memory' if a.soft_memory else ''}) J {on.j:.3f} F {on.f:.3f} J&F {on.jf:.3f} ({on.fps:.1f} fps) | {machine()}",
                flush=True,
            )


def adapt_rows(a: argparse.Namespace, net, weights: Path, alpha: float, device) -> None:
    """A line per adaptation steps value: dev J&F with and without correction, seconds of adaptation per
    video and per 100 frames, frames/s of the rest; a line per further seed (``--adapt-seeds``, with
    correction only) and their mean; then the J&F of each sequence with correction."""
    seeds = [int(x) for x in a.adapt_seeds.split(",")]
    table = {}
    for steps in (int(x) for x in a.adapt.split(",")):
        guard = GuardConfig(enabled=not a.no_adapt_guard)
        means = []
        for seed in seeds if steps else seeds[:1]:
            adapt = AdaptConfig(steps=steps, rate=a.adapt_rate, batch=a.adapt_batch, seed=seed, guard=guard)
            rows, results = {}, {}
            for gc in (False, True) if seed == seeds[0] else (True,):
                cfg = replace(gc_config(gc, alpha, not a.soft_memory, a.precision.split(",")[0]), adapt=adapt)
                results[gc] = score(net, a.data, cfg, device, rows if gc else None)
            table[(steps, seed)] = rows
            on = results[True]
            means.append(on.jf)
            per_100 = 100 * on.adapt_seconds * len(rows) / on.frames
            off = f"without GC J&F {results[False].jf:.3f} ({results[False].fps:.1f} fps); " if False in results else ""
            print(
                f"quality {a.data.name} ({weights.name}) adapt {steps} steps (rate {a.adapt_rate:g}, batch "
                f"{a.adapt_batch}, seed {seed}, guard {'on' if guard.enabled else 'off'}): {off}with GC J&F "
                f"{on.jf:.3f} ({on.fps:.1f} fps); adaptation {on.adapt_seconds:.1f} s per video, {per_100:.1f} s per 100 frames"
                f" | {machine()}",
                flush=True,
            )
        if len(means) > 1:
            print(
                f"  adapt {steps} steps over seeds {a.adapt_seeds}: with GC J&F mean {sum(means) / len(means):.3f}"
                f" (min {min(means):.3f}, max {max(means):.3f})",
                flush=True,
            )
    names = sorted(next(iter(table.values())))
    print("J&F with GC per sequence: " + ", ".join(names))
    for (steps, seed), rows in table.items():
        cells = [f"{rows[n][0]:.3f}{'' if rows[n][2] == 'adapted' or not steps else ' (original kept)'}" for n in names]
        print(
            f"  adapt {steps:>3} seed {seed}: "
            + ", ".join(cells)
            + f"  | adaptation s: {', '.join(f'{rows[n][1]:.0f}' for n in names)}"
        )


if __name__ == "__main__":
    main()
