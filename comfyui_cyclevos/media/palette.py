"""The DAVIS palette: the colours of object ids in every mask cyclevos reads or writes."""

from __future__ import annotations

import numpy as np


def _voc_palette() -> np.ndarray:
    """The PASCAL VOC / DAVIS colour map: the bits of the index spread over R, G, B from the top bit down."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    pal.setflags(write=False)
    return pal


DAVIS_PALETTE: np.ndarray = _voc_palette()
"""(256, 3) uint8, read-only: id 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), 4 (0,0,128), ..."""


def _palette_codes() -> dict[int, int]:
    """Packed 0xRRGGBB colour -> palette index, for indices 1..255 (0 is black = background)."""
    p = DAVIS_PALETTE.astype(np.uint32)
    codes = (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]
    return {int(c): i for i, c in enumerate(codes) if i > 0}
