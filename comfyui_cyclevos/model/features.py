"""What the query encoder computes once per frame (``FrameFeatures``), shared by every later use of it."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class FrameFeatures:
    """What the query encoder computes once per frame; every later use of that frame shares it.

    ``decoder_part`` (the decoder's frame terms) and ``image_part`` (the fused memory encoder's image terms)
    depend on the frame alone, so they are computed once per frame rather than once per object or per
    gradient-correction step; with one frame (B = 1) they broadcast over the objects without copies.
    """

    key: torch.Tensor  # (B, Ck, h, w)
    f16: torch.Tensor  # (B, C16, h, w)
    f8: torch.Tensor  # (B, C8, H/8, W/8)
    f4: torch.Tensor  # (B, C4, H/4, W/4)
    decoder_part: tuple[torch.Tensor, ...]  # Decoder.frame_part: value term at 1/16, skip branches at 1/8, 1/4
    image_part: tuple[torch.Tensor, ...] | None  # fused memory encoder's image terms, or None (stm)

    def select(self, index) -> FrameFeatures:
        """The features of some frames of a batch (``index`` as for tensor indexing on dim 0)."""

        def pick(t):
            if t is None:
                return None
            if isinstance(t, tuple):
                return tuple(pick(x) for x in t)
            return t[index]

        return FrameFeatures(*(pick(getattr(self, f.name)) for f in fields(self)))


def per_object(t: torch.Tensor, objects: int) -> torch.Tensor:
    """A frame's term (B, ...) for its B*objects object rows: itself when B = 1 (it broadcasts), else each
    frame's row repeated for its objects."""
    return t if t.shape[0] == 1 else t.repeat_interleave(objects, dim=0)
