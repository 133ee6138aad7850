"""Does the cycle confidence rank frames by their true quality? Dev sequences, every frame scored.

    python benchmarks/confidence.py [--weights PATH] [--reference own,recent,both] [--gc]

For each reference mode: Spearman correlation between each (frame, object) score and that frame's true J
(per sequence and pooled over all sequences), and the mean true J of the 10 % lowest-scored frames vs all.
Then the cost of the default report: the share of the engine's time spent scoring (the correction
schedule's frames, correction on) on each sequence. Needs the DAVIS-2016 dev sequences beside the repo
(../shared/data).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine

from comfyui_cyclevos.config import ConfidenceConfig, CorrectionConfig, InferenceConfig
from comfyui_cyclevos.evaluation.metrics import jaccard
from comfyui_cyclevos.inference.engine import InferenceCore
from comfyui_cyclevos.media.davis import list_sequences, load_sequence
from comfyui_cyclevos.model.checkpoint import checkpoint_meta, default_weights_path, load_checkpoint
from comfyui_cyclevos.runtime.device import pick_device

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016" / "dev-480p"


def ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a))
    r[order] = np.arange(len(a))
    for v in np.unique(a):
        tie = a == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x, y) -> float:
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def run(net, frames, labels, config, device) -> tuple[list[float], list[float], float, int]:
    """Scores and true J of every scored (frame, object), seconds, frames."""
    eng = InferenceCore(net, config, device)
    scores, truth = [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        eng.step(frames[0], labels[0])
        for t in range(1, len(frames)):
            pred = eng.labels(eng.step(frames[t]))
            for i, s in eng.scores.items():
                scores.append(s)
                truth.append(jaccard(labels[t] == i, pred == i))
    return scores, truth, time.perf_counter() - t0, len(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--reference", default="own,recent,both")
    ap.add_argument("--gc", action="store_true", help="with gradient correction (scores on every frame either way)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = pick_device(a.device)
    weights = a.weights or default_weights_path()
    net = load_checkpoint(weights, device)
    alpha = float(checkpoint_meta(weights).get("gc_rate", CorrectionConfig.rate))
    names = list_sequences(a.data)
    data = {n: load_sequence(a.data, n) for n in names}
    for mode in a.reference.split(","):
        config = InferenceConfig(
            precision=a.precision,
            correction=CorrectionConfig(enabled=a.gc, rate=alpha),
            confidence=ConfidenceConfig(enabled=True, every=1, reference=mode),
        )
        pooled_s, pooled_j, per_seq = [], [], []
        for n in names:
            s, j, _, _ = run(net, *data[n], config, device)
            per_seq.append(f"{n} {spearman(s, j):.2f}")
            pooled_s += s
            pooled_j += j
        s, j = np.array(pooled_s), np.array(pooled_j)
        low = j[s <= np.quantile(s, 0.1)]
        print(
            f"confidence {a.data.name} ({weights.name}, reference {mode}{', GC' if a.gc else ''}): pooled Spearman "
            f"{spearman(s, j):.3f} over {len(s)} frame-objects; true J of the 10% lowest-scored {low.mean():.3f} "
            f"vs all {j.mean():.3f}; per sequence: {', '.join(per_seq)} | {machine()}",
            flush=True,
        )

    spent = [0.0]
    real = InferenceCore._score

    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        out = real(self, *args, **kwargs)
        spent[0] += time.perf_counter() - t
        return out

    InferenceCore._score = timed
    config = InferenceConfig(
        precision=a.precision,
        correction=CorrectionConfig(enabled=True, rate=alpha),
        confidence=ConfidenceConfig(enabled=True),
    )
    total = 0.0
    for n in names:
        total += run(net, *data[n], config, device)[2]
    InferenceCore._score = real
    print(
        f"confidence cost ({weights.name}, correction on, default schedule): {100 * spent[0] / total:.1f} % of the "
        f"engine's time scoring | {machine()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
