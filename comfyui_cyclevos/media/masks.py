"""Masks of object ids from files and arrays: palette, grey, binary, alpha and colour masks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError
from .palette import _palette_codes


def mask_from_array(ids: Any, name: str = "mask") -> np.ndarray:
    """(H, W) uint8 ids from any 2-D array of whole numbers 0..255 (bool, int or integral float)."""
    a = np.asarray(ids)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array of object ids, got shape {a.shape}; give one id map per frame")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise InputError(f"{name} holds non-integer values; object ids must be whole numbers 0..255")
    if a.dtype.kind not in "iuf":
        raise InputError(f"{name} has dtype {a.dtype}; object ids must be whole numbers 0..255")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise InputError(
            f"{name} holds ids from {a.min()} to {a.max()}; ids must be 0 (background) to 255, at most 255 objects"
        )
    return a.astype(np.uint8)


def _grey_ids(a: np.ndarray) -> np.ndarray:
    """Grey values up to 127 are ids; anything reaching 128 or more is a binary (or soft/JPEG) mask cut at half its max."""
    if a.size == 0:
        return a.astype(np.uint8)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError("mask holds NaN or infinite values; save it as an 8-bit PNG")
    top = a.max()
    if a.min() < 0:
        raise InputError("mask holds negative values; object ids must be 0..255")
    if top >= 128 or (a.dtype.kind == "f" and (a != np.round(a)).any()):
        return (a > top / 2).astype(np.uint8)
    return a.astype(np.uint8)


def _wide_ids(a: np.ndarray) -> np.ndarray:
    """A 16-bit (or 32-bit) grey mask holds ids, read as they are: no threshold at 128 as for 8-bit grey. A
    two-level 0/N mask with N above 255 is a binary mask (one object); other ids above 255 are refused."""
    if a.size == 0:
        return a.astype(np.uint8)
    if a.min() < 0:
        raise InputError("mask holds negative values; object ids must be 0..255")
    values = np.unique(a)
    if len(values) == 2 and values[0] == 0 and values[1] > 255:
        return (a > 0).astype(np.uint8)
    if values[-1] > 255:
        n = int((values != 0).sum())
        raise InputError(
            f"16-bit mask holds {n} object id(s) up to {int(values[-1])}: ids must be 1..255 (at most 255 objects); "
            "renumber the objects 1..255 and save an 8-bit palette PNG"
        )
    return a.astype(np.uint8)


def _colour_ids(rgb: np.ndarray) -> np.ndarray:
    """Solid colours -> ids: DAVIS palette indices if every colour is a palette colour, else order of appearance."""
    h, w, _ = rgb.shape
    c = rgb.astype(np.uint32)
    code = ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).ravel()
    uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    fg = uniq != 0
    n = int(fg.sum())
    if n > 255:
        raise InputError(
            f"colour mask has {n} different colours (at most 255 objects); save it as PNG with solid "
            "colours, no anti-aliasing or JPEG compression"
        )
    lut = np.zeros(len(uniq), np.uint8)
    pal = _palette_codes()
    if all(int(u) in pal for u in uniq[fg]):
        lut[fg] = [pal[int(u)] for u in uniq[fg]]
    else:
        order = np.flatnonzero(fg)[np.argsort(first[fg], kind="stable")]
        lut[order] = np.arange(1, n + 1)
    return lut[inverse.reshape(-1)].reshape(h, w)


def _ids_from_image(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        return np.array(im, np.uint8)  # palette indices are the ids (DAVIS annotations)
    if mode == "PA":
        return np.array(im.convert("PA"))[..., 0].astype(np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La"):
        alpha = np.array(im.getchannel("A"))
        if alpha.min() < 255:  # a cut-out: the alpha channel is the mask, whatever the colours
            return (alpha > 127).astype(np.uint8)
        im = im.convert("RGB" if mode.startswith("RGB") else "L")
        mode = im.mode
    if mode == "1":
        return np.array(im, np.uint8)
    if mode.startswith("I;16") or mode == "I":
        return _wide_ids(np.asarray(im, dtype=np.int64))
    if mode in ("L", "F") or mode.startswith("I"):
        return _grey_ids(np.array(im))
    rgb = np.array(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _grey_ids(rgb[..., 0])  # a grey mask saved as RGB
    return _colour_ids(rgb)


def ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids from an (H, W, 3) uint8 picture of a mask, by the rules of ``read_mask`` for RGB
    files: grey ids or a binary grey mask, else solid colours (DAVIS palette colours map to their index)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise InputError(f"a colour mask must be (H, W, 3) uint8, got {a.shape} {a.dtype}")
    return _ids_from_image(Image.fromarray(a, "RGB"))


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W) uint8 object ids from a mask image; ids are kept as given (need not be contiguous).

    Accepted: a palette PNG (indices are ids, as in DAVIS); greyscale ids 0..127; a binary or soft
    greyscale mask (any value >= 128 present: thresholded at half its maximum -> 0/1, so 0/255 and
    JPEG-blurred masks give one object); RGBA whose alpha is not fully opaque (alpha > 127 -> 1, one
    object); RGB of solid colours (black is background; DAVIS palette colours map to their index,
    other colours get 1, 2, ... in order of first appearance, scanning rows top to bottom).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"mask {p} does not exist; give the path of a PNG mask of the first frame")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # same orientation as the frames
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read mask {p} ({e}); save the mask as a PNG image") from None
    return _ids_from_image(im)
