"""Reading DAVIS-layout folders: ``JPEGImages/[RES/]SEQ/*.jpg`` beside ``Annotations/[RES/]SEQ/*.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError


def _seq_root(root: Path, kind: str) -> Path:
    base = root / kind
    if not base.is_dir():
        raise InputError(
            f"{root} is not a DAVIS-layout folder: no {kind}/ in it; point --data at the folder holding JPEGImages/ and Annotations/"
        )
    # DAVIS ships JPEGImages/480p/SEQ; our training copy has JPEGImages/SEQ directly.
    subs = [p for p in base.iterdir() if p.is_dir()]
    if len(subs) == 1 and subs[0].name in ("480p", "240p", "Full-Resolution", "1080p"):
        return subs[0]
    return base


def list_sequences(root: str | Path) -> list[str]:
    root = Path(root)
    return sorted(p.name for p in _seq_root(root, "JPEGImages").iterdir() if p.is_dir())


def sequence_paths(root: str | Path, seq: str) -> tuple[list[Path], list[Path]]:
    """Frame paths and annotation paths (annotations may be only the first one, as in DAVIS-17 test)."""
    root = Path(root)
    frames = sorted((_seq_root(root, "JPEGImages") / seq).glob("*.jpg"))
    ann_dir = _seq_root(root, "Annotations") / seq
    annotations = sorted(ann_dir.glob("*.png")) if ann_dir.is_dir() else []
    if not frames:
        raise InputError(f"sequence {seq!r} has no frames under {root}/JPEGImages")
    return frames, annotations


def read_label_png(path: Path) -> np.ndarray:
    """Object ids (H, W) uint8 from a label PNG.

    Palette PNGs give their indices (DAVIS: 255 is void). 1-bit PNGs (DAVIS 2016 ships these) give 0/1.
    Grey PNGs give their values, except that a 0/255-only mask is a binary mask and reads as 0/1.
    Colour PNGs are refused: their colours do not say which object id they mean; a file that is not an
    image is an InputError naming it.
    """
    try:
        return _read_label_png(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(
            f"cannot read label PNG {path} ({type(e).__name__}: {str(e)[:120]}); replace that file"
        ) from None


def _read_label_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        mode = im.mode
        if mode in ("LA", "PA"):
            im = im.getchannel(0)
            mode = "P" if mode == "PA" else "L"
        if mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"))
            if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
                raise InputError(f"{path} is a colour PNG; save masks as palette (indexed) or grey PNGs of object ids")
            a = rgb[..., 0]
            mode = "L"
        else:
            a = np.asarray(im)
    if mode == "1":
        return a.astype(np.uint8)
    if mode != "P":
        if a.size and int(a.max()) > 255:
            raise InputError(f"{path} has label values above 255; object ids must fit in 0..255")
        if a.size and int(a.max()) == 255 and np.isin(a, (0, 255)).all():
            return (a > 0).astype(np.uint8)
    return a.astype(np.uint8)


def load_sequence(root: str | Path, seq: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames and (T, H, W) uint8 labels of a fully annotated sequence."""
    frames, anns = sequence_paths(root, seq)
    if len(anns) != len(frames):
        raise InputError(
            f"sequence {seq!r} has {len(frames)} frames but {len(anns)} annotations; training needs every frame annotated"
        )
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in frames])
    y = np.stack([read_label_png(p) for p in anns])
    return x, y
