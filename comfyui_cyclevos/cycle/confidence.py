"""Cycle confidence: a per-frame, per-object self-check built on the paper's cyclic mechanism.

For frame t and its written mask Y_t, the network remembers only {X_t, Y_t} and predicts a reference
frame's mask back (Eq. 2, as gradient correction does); the IoU of that prediction with the reference mask
is the score. A mask that explains the reference is likely right; one that does not has likely drifted.
Two references are used: each object's own latest precise mask (far in time: catches drift, but a large
change of view lowers it) and the latest memorised frame with its written mask (near: robust to view
changes, blind to slow drift); ``both`` averages them. ``suggest_keyframes`` turns the scores into the
frames an artist should fix first, and into none when no frame is low (``low_score_limit``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..model.aggregation import soft_aggregate
from ..model.features import FrameFeatures
from ..model.network import CycleVOSNet
from .correction import fixed_affinity, reconstruction_logits


def reference_iou(
    net: CycleVOSNet,
    masks: torch.Tensor,
    x: torch.Tensor,
    features: FrameFeatures,
    *,
    ref_x: torch.Tensor,
    ref_features: FrameFeatures,
    targets: torch.Tensor,
) -> torch.Tensor:
    """masks (1, n, Hp, Wp) written on frame x, targets (1, n, Hp, Wp) on the reference -> (n,) IoU of
    the reconstructed reference masks (thresholded at 0.5) with the targets; 1 where both are empty."""
    with torch.no_grad():
        logits = reconstruction_logits(
            net, masks, x, features, ref_x, ref_features, fixed_affinity(net, features, ref_features)
        )
        pred = soft_aggregate(torch.sigmoid(logits.float()))[:, 1:] > 0.5
    target = targets > 0.5
    inter = (pred & target).flatten(2).sum(-1).float()[0]
    union = (pred | target).flatten(2).sum(-1).float()[0]
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).cpu()


SUGGEST_FLOOR = 0.5  # a worst-object score below this is low in absolute terms (the reference is half missed)
SUGGEST_DROP = 0.1  # ... or this far below the clip's median at least,
SUGGEST_MADS = 3.0  # ... and this many robust standard deviations (1.4826 MAD) below it
NONE_NEEDED = "none needed"


def low_score_limit(values, *, floor: float = SUGGEST_FLOOR, drop: float = SUGGEST_DROP, mads: float = SUGGEST_MADS):
    """The score under which a frame is suggested, from the worst-object scores of the scored frames:
    ``max(floor, median - max(drop, mads * 1.4826 * MAD))``. A frame is low when it is low in absolute terms
    (under ``floor``) or clearly below the rest: an outlier by the median and the median absolute deviation
    (robust to the few low frames themselves), and at least ``drop`` below the median, so that a clip whose
    scores all lie close together (0.92-0.96 on the demo) has no outlier worth an artist's time."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return floor
    median = float(np.median(v))
    mad = float(np.median(np.abs(v - median)))
    return max(floor, median - max(drop, mads * 1.4826 * mad))


def suggest_keyframes(
    scores: dict[int, dict[int, float]],
    count: int = 3,
    frames: int | None = None,
    *,
    floor: float = SUGGEST_FLOOR,
    drop: float = SUGGEST_DROP,
    mads: float = SUGGEST_MADS,
) -> list[int]:
    """The frames to correct first, at most ``count`` of them, possibly none: the frames whose worst-object
    score is under ``low_score_limit`` (low in absolute terms or clearly below the rest), lowest first, at
    least ``frames / (2 count)`` apart so that the suggestions spread over the video. An empty list means no
    keyframe is needed (``NONE_NEEDED``). ``scores`` maps frame index -> {object id: score}."""
    worst = {t: min(s.values()) for t, s in scores.items() if s}
    limit = low_score_limit(worst.values(), floor=floor, drop=drop, mads=mads)
    low = sorted((v, t) for t, v in worst.items() if v < limit)
    if not low or count < 1:
        return []
    span = frames or (max(scores) + 1)
    gap = max(1, span // (2 * count))
    chosen: list[int] = []
    for _, t in low:
        if all(abs(t - c) >= gap for c in chosen):
            chosen.append(t)
        if len(chosen) == count:
            break
    return sorted(chosen)


def describe_suggestions(suggested: list[int]) -> str:
    """The suggested frames as text: comma-separated indices, or ``NONE_NEEDED``."""
    return ", ".join(map(str, suggested)) if suggested else NONE_NEEDED


def write_report(
    path: str | Path, scores: dict[int, dict[int, float]], suggested: list[int], frames: int, *, mark: bool = False
) -> Path:
    """``path`` (.csv: frame,object,score) and a plot beside it (same name, .png); returns the plot's path.
    ``mark`` tags the plot as cyclevos's own (a PNG text chunk), so a later run may replace it."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "object", "score"])
        for t in sorted(scores):
            for obj, s in sorted(scores[t].items()):
                w.writerow([t, obj, f"{s:.4f}"])
    plot = path.with_suffix(".png")
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if mark:
        info.add_text("Software", "written-by-cyclevos")
    Image.fromarray(plot_scores(scores, suggested, frames)).save(plot, format="PNG", pnginfo=info)
    return plot


PLOT_COLOURS = [(228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0), (166, 86, 40)]


def plot_scores(
    scores: dict[int, dict[int, float]], suggested: list[int], frames: int, size: tuple[int, int] = (240, 640)
) -> np.ndarray:
    """(H, W, 3) uint8: each object's score (0 bottom, 1 top) over the frames, suggested frames as grey
    bars, grid lines at 0.25, 0.5, 0.75, score and frame labels, a legend of object ids, and a caption at the
    top left: "suggested: 5, 35" or "keyframes: none needed". Drawn with numpy and PIL only (no plotting
    dependency)."""
    from PIL import Image, ImageDraw

    H, W = size
    left, right, top, bottom = 30, 8, 14, 18
    img = np.full((H, W, 3), 255, np.uint8)

    def x_of(t):
        return left + int(round(t / max(1, frames - 1) * (W - left - right - 1)))

    def y_of(s):
        return top + int(round((1 - float(s)) * (H - top - bottom - 1)))

    for t in suggested:
        img[top : H - bottom, max(0, x_of(t) - 2) : x_of(t) + 3] = (200, 200, 200)
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        img[y_of(s), left : W - right] = (120, 120, 120) if s in (0.0, 1.0) else (225, 225, 225)
    objects = sorted({o for s in scores.values() for o in s})
    for k, obj in enumerate(objects):
        colour = PLOT_COLOURS[k % len(PLOT_COLOURS)]
        pts = [(x_of(t), y_of(scores[t][obj])) for t in sorted(scores) if obj in scores[t]]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            n = max(abs(x1 - x0), abs(y1 - y0), 1)
            xs = np.round(np.linspace(x0, x1, n + 1)).astype(int)
            ys = np.round(np.linspace(y0, y1, n + 1)).astype(int)
            for dy in (0, 1):
                img[np.clip(ys + dy, 0, H - 1), xs] = colour
        for x, y in pts:
            img[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = colour
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    grey = (90, 90, 90)
    for s in (0.0, 0.5, 1.0):
        d.text((2, y_of(s) - 5), f"{s:.1f}", fill=grey)
    for t in sorted({0, frames - 1, *suggested}):
        d.text((x_of(t) - 3 * len(str(t)), H - bottom + 4), str(t), fill=grey)
    caption = "keyframes: " + NONE_NEEDED if not suggested else "suggested: " + describe_suggestions(suggested)
    d.text((left + 4, 1), caption, fill=(40, 40, 40))
    for k, obj in enumerate(objects[:8]):
        d.text((W - right - 40 * (min(len(objects), 8) - k), 2), f"id {obj}", fill=PLOT_COLOURS[k % len(PLOT_COLOURS)])
    return np.array(pil)
