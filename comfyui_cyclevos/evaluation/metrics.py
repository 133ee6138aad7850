"""DAVIS region (J) and boundary (F) measures, and the per-sequence statistics built on them.

Written in numpy alone so that scores match the official DAVIS evaluation (davis2017-evaluation, itself
ported from the DAVIS 2016 toolkit) without OpenCV, scikit-image or scipy. The conventions below (both
empty counts as a hit, the half-pixel boundary map, the disk tolerance, the four decay bins) are those
of the official code; where it has a defect we say so at the spot.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..filters import dilate_disk

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (the DAVIS default)."""

DECAY_BINS = 4


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J: intersection over union of two boolean masks.

    Two empty masks agree perfectly, so they score 1 (an object absent and correctly not predicted).
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    union = int(np.count_nonzero(gt | pred))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(gt & pred)) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a mask, on the pixel grid shifted half a pixel towards the origin.

    A pixel is a boundary pixel when it differs from its right, lower or lower-right neighbour (outside
    the image counts as background). The last row looks only to the right, the last column only down,
    and the bottom-right pixel is never a boundary: this is D. Martin's ``seg2bmap`` as DAVIS uses it,
    always at the mask's own size (the official resizing branch is never reached by the F measure).
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"boundary_map needs a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    padded = np.zeros((h + 1, w + 1), dtype=bool)
    padded[:h, :w] = m
    right = padded[:h, 1:]
    down = padded[1:, :w]
    diag = padded[1:, 1:]
    b = (m != right) | (m != down) | (m != diag)
    b[-1, :] = m[-1, :] != right[-1, :]
    b[:, -1] = m[:, -1] != down[:, -1]
    b[-1, -1] = False
    return b


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Match radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` itself when it is >= 1.

    The diagonal is computed as ``sqrt(float(h*h + w*w))``, which is what ``numpy.linalg.norm`` of the
    shape gives, so the ceiling falls on the same integer as in the official code.
    """
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(f"a boundary tolerance in pixels must be a whole number, got {bound_th}")
        return int(bound_th)
    h, w = int(shape[0]), int(shape[1])
    return int(math.ceil(bound_th * math.sqrt(float(h * h + w * w))))


def _bbox(a: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(a.any(axis=1))
    cols = np.flatnonzero(a.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary accuracy F: harmonic mean of boundary precision and recall within a disk tolerance.

    Conventions for empty boundaries, as in the official code: both empty -> P = R = 1 (F = 1); only the
    prediction empty -> P = 1, R = 0; only the ground truth empty -> P = 0, R = 1 (F = 0 in both).
    """
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    pb = boundary_map(pred)
    gb = boundary_map(gt)
    n_pred = int(np.count_nonzero(pb))
    n_gt = int(np.count_nonzero(gb))
    if n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif n_pred == 0:
        precision, recall = 1.0, 0.0
    elif n_gt == 0:
        precision, recall = 0.0, 1.0
    else:
        radius = boundary_tolerance(gt.shape, bound_th)
        # Every dilation source and every pixel we count lies inside the boundaries' bounding box, so the
        # work can be cropped to it without changing any count.
        box = _bbox(pb | gb)
        pb, gb = pb[box], gb[box]
        precision = np.count_nonzero(pb & dilate_disk(gb, radius)) / float(n_pred)
        recall = np.count_nonzero(gb & dilate_disk(pb, radius)) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_frame(
    gt_labels: np.ndarray, pred_labels: np.ndarray, n_objects: int, bound_th: float = BOUND_TH
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of each object 1..n_objects in one frame, as two (n_objects,) arrays.

    An object missing from both maps scores J = F = 1, one missing from the prediction only scores 0:
    the official code pads absent predicted objects with empty masks, which gives exactly this.
    """
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt_labels.shape}, prediction {pred_labels.shape}")
    j = np.empty(n_objects)
    f = np.empty(n_objects)
    for k in range(1, n_objects + 1):
        g = gt_labels == k
        p = pred_labels == k
        j[k - 1] = jaccard(g, p)
        f[k - 1] = f_measure(g, p, bound_th)
    return j, f


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame scores (official ``db_statistics``).

    Recall is the fraction of frames scoring strictly above 0.5. Decay is the mean of the first quarter
    minus the mean of the last: the frames are cut into four bins at ``round(linspace(1, n, 5)) - 1``
    (ties rounded up), each bin including its right edge, so neighbouring bins share a frame. NaNs are
    left out of the means. The official code stores the bin edges as uint8, which wraps for sequences
    longer than 256 frames; we keep the edges exact, so results differ from it only on such sequences.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("statistics need at least one per-frame value")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v))
        recall = float(np.mean(v > 0.5))
        edges = np.round(np.linspace(1.0, float(n), DECAY_BINS + 1) + 1e-10).astype(np.int64) - 1
        first = v[edges[0] : edges[1] + 1]
        last = v[edges[DECAY_BINS - 1] : edges[DECAY_BINS] + 1]
        decay = float(np.nanmean(first) - np.nanmean(last))
    return mean, recall, decay
