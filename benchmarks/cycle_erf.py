"""The paper's Figure 6 on our model: cycle-ERF (Eq. 6) of a baseline and a cyclic model side by side.

    python benchmarks/cycle_erf.py --baseline RUN_A/final.pt --cyclic RUN_B/final.pt [--out FIG.jpg]

For each DAVIS-2016 dev sequence: reference frame 0, target frame ``--target`` (its ground-truth mask).
Both models' maps of a row are drawn on one scale (the larger of the two raw peaks), over the reference
frame with its object outlined. Prints, per sequence and on average, the mean raw map inside the
reference frame's object divided by the mean outside (the higher, the more the model relies on the
object itself), and each raw peak. The two checkpoints should share data, budget and seed, and differ
only by ``--no-cyclic``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from machine import machine
from PIL import Image, ImageDraw
from quality import DEV

from comfyui_cyclevos.config import CycleERFConfig
from comfyui_cyclevos.cycle.erf import compute_cycle_erf, heatmap_overlay, outline
from comfyui_cyclevos.media.davis import list_sequences, load_sequence
from comfyui_cyclevos.model.checkpoint import load_checkpoint

PANEL_WIDTH = 320


def _panel(img: np.ndarray, label: str) -> Image.Image:
    """An image scaled to the panel width with a caption strip above it."""
    h, w = img.shape[:2]
    pic = Image.fromarray(img).resize((PANEL_WIDTH, round(h * PANEL_WIDTH / w)), Image.BILINEAR)
    out = Image.new("RGB", (PANEL_WIDTH, pic.height + 18), (255, 255, 255))
    out.paste(pic, (0, 18))
    ImageDraw.Draw(out).text((4, 3), label, fill=(0, 0, 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True)
    ap.add_argument("--cyclic", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--target", type=int, default=40, help="target frame t (reference frame l is 0)")
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--out", type=Path, default=None, help="write the figure here (.jpg/.png)")
    args = ap.parse_args()
    torch.manual_seed(0)
    nets = {"baseline": load_checkpoint(args.baseline), "cyclic": load_checkpoint(args.cyclic)}
    config = CycleERFConfig()
    ratios = {k: [] for k in nets}
    rows = []
    print(f"| sequence | baseline in/out | cyclic in/out | baseline peak | cyclic peak |  ({machine()})")
    print("|---|---|---|---|---|")
    for seq in list_sequences(args.data):
        x, y = load_sequence(args.data, seq)
        t = min(args.target, len(x) - 1)
        ref_obj, target_obj = y[0] > 0, y[t] > 0
        maps = {
            k: compute_cycle_erf(
                net, ref_frame=x[0], target_frame=x[t], target_mask=target_obj, size=args.size, config=config
            )
            for k, net in nets.items()
        }
        raw = {k: m.map * m.scale for k, m in maps.items()}  # each map is its raw map over its own peak
        peaks = {k: m.peak for k, m in maps.items()}
        for k, m in raw.items():
            ratios[k].append(float(m[ref_obj].mean() / max(m[~ref_obj].mean(), 1e-12)))
        shared = max(peaks.values())
        target = x[t].copy()
        target[outline(target_obj)] = 255
        panels = [_panel(target, f"{seq}: target frame {t}")]
        for k in nets:
            drawn = heatmap_overlay(x[0], raw[k] / shared, ref_obj, shared)
            panels.append(_panel(drawn, f"{k}: frame 0, in/out {ratios[k][-1]:.2f}"))
        row = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), (255, 255, 255))
        for i, p in enumerate(panels):
            row.paste(p, (i * PANEL_WIDTH, 0))
        rows.append(row)
        print(
            f"| {seq} | {ratios['baseline'][-1]:.2f} | {ratios['cyclic'][-1]:.2f} | {peaks['baseline']:.3g} | {peaks['cyclic']:.3g} |"
        )
    print(f"| mean | {np.mean(ratios['baseline']):.2f} | {np.mean(ratios['cyclic']):.2f} | | |")
    if args.out is not None:
        fig = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), (255, 255, 255))
        y0 = 0
        for r in rows:
            fig.paste(r, (0, y0))
            y0 += r.height
        fig.save(args.out, quality=88)
        print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
