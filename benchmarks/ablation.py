"""The paper's ablation on our own model, on the DAVIS-2016 dev sequences (paper Tables 3 and 4).

    python benchmarks/ablation.py --baseline RUN/final.pt --cyclic weights/cyclevos-lite.pt [--data DIR]

The baseline is trained with ``cyclevos train --no-cyclic`` on the same budget and seed as the cyclic one.
Table 3: baseline, +cyclic, +gradient correction, +both (J, F, J&F), with the engine's memory of label
maps, and J&F again with STM's memory of probabilities (``MemoryConfig(hard=False)``).
Table 4: J&F with the reference sets {X_1}, {X_t-1}, {X_1, X_t-1} and the memory schedule (MEM), for
baseline and cyclic, without correction. Prints both tables as markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from machine import machine
from quality import DEV, score

from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig, MemoryConfig
from comfyui_cyclevos.media.davis import list_sequences
from comfyui_cyclevos.model.checkpoint import checkpoint_meta, load_checkpoint
from comfyui_cyclevos.runtime.device import pick_device

REFERENCE_SETS = {
    "{X_1}": MemoryConfig(use_previous=False, use_every_k=False),
    "{X_t-1}": MemoryConfig(use_first=False, use_every_k=False),
    "{X_1, X_t-1}": MemoryConfig(use_every_k=False),
    "MEM": MemoryConfig(),
}


def run(net, data: Path, memory: MemoryConfig, gc: bool, alpha: float, device) -> tuple[float, float, float]:
    """J, F and J&F in percent."""
    cfg = InferenceConfig(memory=memory, correction=CorrectionConfig(enabled=gc, rate=alpha))
    j, f, jf, _ = score(net, data, cfg, device)
    return 100 * j, 100 * f, 100 * jf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--cyclic", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = pick_device(a.device)
    nets = {
        name: (load_checkpoint(p, device), float(checkpoint_meta(p).get("gc_rate", CorrectionConfig.rate)))
        for name, p in (("baseline", a.baseline), ("cyclic", a.cyclic))
    }
    t3 = {}
    for name, (net, alpha) in nets.items():
        for gc in (False, True):
            t3[name, gc] = run(net, a.data, MemoryConfig(), gc, alpha, device)
            t3[name, gc, "soft"] = run(net, a.data, MemoryConfig(hard=False), gc, alpha, device)
    print(f"Table 3 (dev, {len(list_sequences(a.data))} sequences; {machine()})\n")
    print("| | J | F | J&F | J&F, memory of probabilities |\n|---|---|---|---|---|")
    for label, key in (
        ("baseline", ("baseline", False)),
        ("+ cyclic", ("cyclic", False)),
        ("+ GC", ("baseline", True)),
        ("+ both", ("cyclic", True)),
    ):
        j, f, jf = t3[key]
        print(f"| {label} | {j:.1f} | {f:.1f} | {jf:.1f} | {t3[key + ('soft',)][2]:.1f} |")
    print("\nTable 4 (J&F, no correction)\n")
    print("| reference set | baseline | + cycle | Δ |\n|---|---|---|---|")
    for label, memory in REFERENCE_SETS.items():
        if label == "MEM":
            b, c = t3["baseline", False][2], t3["cyclic", False][2]
        else:
            b = run(nets["baseline"][0], a.data, memory, False, 0.0, device)[2]
            c = run(nets["cyclic"][0], a.data, memory, False, 0.0, device)[2]
        print(f"| {label} | {b:.1f} | {c:.1f} | {c - b:+.1f} |")


if __name__ == "__main__":
    main()
