"""The objects an engine follows, and each one's correction reference (as Cutie's object manager).

Every per-object tensor of the engine (memory values, masks, outputs) has one row per object, in the order
of ``ObjectManager.ids``. Objects can be added on any frame and removed from a frame on; an object keeps
its id for as long as it is followed, also while it is out of view.

Gradient correction (Eq. 5) reconstructs a reference mask Y_1. Each object's reference is its own latest
*precise* mask (the first frame's, or a later one given by the user): a mask given later for some objects
moves only their references, and the engine's own predictions never become references.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..model.features import FrameFeatures

MAX_OBJECTS = 255  # ids 1..255: one byte per pixel in the written label maps


def check_mask(ids: np.ndarray, frame_size: tuple[int, int], name: str = "mask") -> list[int]:
    """Check a mask of object ids against its frame's size (H, W); return the sorted object ids present."""
    a = np.asarray(ids)
    if a.ndim != 2:
        raise InputError(f"{name} must be a 2-D array of object ids, got shape {a.shape}")
    h, w = a.shape
    fh, fw = int(frame_size[0]), int(frame_size[1])
    if (h, w) != (fh, fw):
        raise InputError(
            f"{name} is {w}x{h} but the frame is {fw}x{fh} (width x height); resize the mask "
            f"to {fw}x{fh} or give the frame it was drawn on"
        )
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {a.dtype}; object ids must be whole numbers 0..255")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise InputError(
            f"{name} holds non-integer values (a soft or NaN mask); object ids must be whole numbers 0..255: "
            "threshold it first"
        )
    objects = np.unique(a)
    objects = objects[objects != 0]
    if objects.size == 0:
        raise InputError(f"{name} has no object pixels (all background); draw at least one object")
    if objects.size > MAX_OBJECTS:
        raise InputError(
            f"{name} has {objects.size} objects; at most {MAX_OBJECTS} objects (ids 1..{MAX_OBJECTS}) are supported"
        )
    if objects.min() < 0 or objects.max() > 255:
        raise InputError(f"{name} holds ids from {objects.min()} to {objects.max()}; ids must be 1..255")
    return [int(x) for x in objects]


@dataclass
class Reference:
    """A frame with precise masks: its processed frame, features, and the masks (1, n, Hp, Wp) of the
    objects ``ids`` on it."""

    frame_index: int
    x: torch.Tensor
    features: FrameFeatures
    ids: list[int]
    masks: torch.Tensor


@dataclass
class ReferenceGroup:
    """The objects that share one reference frame: their rows in the engine and their target masks."""

    reference: Reference
    rows: list[int]
    targets: torch.Tensor  # (1, len(rows), Hp, Wp)


class ObjectManager:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self._reference_of: dict[int, Reference] = {}  # object id -> its latest precise mask's frame

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: list[int]) -> list[int]:
        return [self.ids.index(i) for i in ids]

    def add(self, ids: list[int]) -> list[int]:
        """Add the ids not followed yet; returns them (in the order given)."""
        new = [i for i in ids if i not in self.ids]
        if len(self.ids) + len(new) > MAX_OBJECTS:
            raise InputError(f"more than {MAX_OBJECTS} objects: give at most {MAX_OBJECTS}")
        self.ids += new
        return new

    def remove(self, ids: list[int]) -> list[int]:
        """Stop following ``ids``; returns the rows they had (to drop from every per-object tensor)."""
        unknown = [i for i in ids if i not in self.ids]
        if unknown:
            raise InputError(f"cannot remove object(s) {unknown}: the objects followed are {self.ids}")
        rows = self.rows(ids)
        self.ids = [i for i in self.ids if i not in ids]
        for i in ids:
            self._reference_of.pop(i, None)
        return rows

    def set_reference(
        self, frame_index: int, x: torch.Tensor, features: FrameFeatures, ids: list[int], masks: torch.Tensor
    ) -> None:
        """``masks`` (1, len(ids), Hp, Wp): precise masks of ``ids`` on this frame become their references."""
        ref = Reference(frame_index, x, features, list(ids), masks)
        for i in ids:
            self._reference_of[i] = ref

    def reference_groups(self) -> list[ReferenceGroup]:
        """The followed objects grouped by reference frame (one correction per group), oldest first."""
        groups: dict[int, tuple[Reference, list[int], list[torch.Tensor]]] = {}
        for row, i in enumerate(self.ids):
            ref = self._reference_of.get(i)
            if ref is None:
                continue
            _, rows, targets = groups.setdefault(id(ref), (ref, [], []))
            rows.append(row)
            targets.append(ref.masks[:, ref.ids.index(i)])
        out = [ReferenceGroup(ref, rows, torch.stack(t, 1)) for ref, rows, t in groups.values()]
        return sorted(out, key=lambda g: g.reference.frame_index)
