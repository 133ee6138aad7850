"""The inference engine: one object per video owns all state (memory bank, object ids, frame index,
correction reference); the network stays stateless. ``step(frame, mask=None)`` per frame, in order.

Frames are processed at a short side of ``InferenceConfig.size`` (240, the paper's), padded to a multiple
of 16, and the probabilities are resized back to the frame's own size.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .config import InferenceConfig
from .correction import gradient_correct, normalize_objects
from .errors import InputError
from .geometry import Geometry
from .memory import MemoryBank, MemoryEntry
from .network import CycleVOSNet, soft_aggregate
from .video_io import check_mask

MAX_OBJECTS = 255


def box_shaped(onehot: torch.Tensor) -> bool:
    """True when every object of a (O, H, W) mask fills its bounding box: a coarse box hint (Table 5)."""
    for m in onehot:
        ys, xs = torch.nonzero(m > 0.5, as_tuple=True)
        if len(ys) == 0:
            continue
        area = (int(ys.max()) - int(ys.min()) + 1) * (int(xs.max()) - int(xs.min()) + 1)
        if len(ys) < 0.98 * area:
            return False
    return True


class InferenceCore:
    """Propagates the objects of a mask through a video, one ``step`` per frame.

    ``step(frame)`` returns the probabilities of (background, objects...) as a (O+1, H, W) float tensor
    on the CPU, at the frame's size; ``labels(probs)`` turns them into an id map. A mask on the first
    frame adds its objects; a mask on a later frame adds new objects and replaces the prediction of the
    objects it contains, and goes into memory. A precise mask becomes the reference of gradient
    correction; a box-shaped one (``coarse``, detected when not given) is corrected before it goes
    into memory, as in the paper's Table 5. With correction on, the corrected mask is both what is
    returned and what goes into memory.
    """

    def __init__(self, net: CycleVOSNet, config: InferenceConfig | None = None, device: torch.device | None = None):
        self.net = net.eval()
        self.config = config or InferenceConfig()
        self.device = device or next(net.parameters()).device
        self.reset()

    def reset(self) -> None:
        self.memory = MemoryBank(self.config.memory)
        self.object_ids: list[int] = []
        self.frame_index = -1
        self._reference = None  # (x, features, masks) of the latest precise user mask
        self.geometry: Geometry | None = None  # set by the first frame

    def _autocast(self):
        if self.device.type == "cuda" and self.config.fp16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    # the step ---------------------------------------------------------------------------------
    def _parse_mask(self, mask) -> tuple[list[int], torch.Tensor]:
        ids = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        present = check_mask(ids, self.geometry.frame, "the mask")
        return present, torch.from_numpy(ids.astype(np.int64))

    def step(self, frame, mask=None, coarse: bool | None = None) -> torch.Tensor:
        """Process the next frame; ``mask`` is an optional (H, W) map of object ids on this frame."""
        cfg = self.config
        first = self.frame_index < 0
        self.frame_index += 1
        if self.geometry is None:
            H, W = (frame.shape[0], frame.shape[1])
            self.geometry = Geometry.for_frame(H, W, cfg.size)
        geo = self.geometry
        x = geo.frame_in(frame, self.device)  # (1, 3, Hp, Wp)
        given = None
        if mask is None and first:
            raise InputError("the first frame needs a mask of the objects to follow")
        if mask is not None:
            present, ids = self._parse_mask(mask)
            new = [i for i in present if i not in self.object_ids]
            if len(self.object_ids) + len(new) > MAX_OBJECTS:
                raise InputError(f"more than {MAX_OBJECTS} objects: give at most {MAX_OBJECTS}")
            if new:
                self.memory.add_objects(len(new))
                self.object_ids += new
            given = (present, ids)
        O = len(self.object_ids)
        with torch.no_grad(), self._autocast():
            features = self.net.encode_frame(x)
            probs = None
            if len(self.memory) > 0:
                keys, values, valid = self.memory.stacked()
                logits = self.net.segment(x, keys, values, features, valid)  # (1, O, Hp, Wp)
                probs = soft_aggregate(torch.sigmoid(logits.float()))  # (1, O+1, Hp, Wp)
        masks = probs[:, 1:] if probs is not None else torch.zeros(1, O, *geo.padded, device=self.device)
        changed = False
        if given is not None:
            present, ids = given
            idx = [self.object_ids.index(i) for i in present]  # rows of the given objects
            onehot = torch.stack([ids == i for i in present])  # (G, H, W) bool
            soft = geo.masks_in(onehot, self.device)  # (1, G, Hp, Wp)
            masks = masks * (1 - soft.sum(1, keepdim=True).clamp(max=1))  # given pixels leave the others
            masks[:, idx] = soft
            changed = True
            if coarse is None:
                coarse = not first and box_shaped(onehot)
            if coarse and cfg.correction.enabled and self._reference is not None:
                masks = self._correct(masks, x, features, cfg.correction.coarse_alpha)
            elif not coarse:
                self._reference = (x, features, masks)
        elif cfg.correction.enabled and self.frame_index % cfg.correction.K == 0 and self._reference is not None:
            masks = self._correct(masks, x, features, cfg.correction.alpha)
            changed = True
        if changed:
            probs = normalize_objects(masks)
        if cfg.memory.hard:  # the label map that is written, as one-hot masks
            masks = F.one_hot(probs.argmax(1), O + 1).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)  # (1, O, Hp, Wp)
        self._remember(x, masks, features, user=given is not None, first=first)
        out = geo.maps_out(probs)  # (O+1, H, W)
        if given is not None:  # the given objects are returned exactly as given
            rows = [i + 1 for i in idx]
            G = onehot.any(0)  # (H, W)
            out[rows] = 0
            out[:, G] = 0
            for r, m in zip(rows, onehot):
                out[r][m] = 1
            out[:, ~G] /= out[:, ~G].sum(0).clamp(min=1e-6)
        return out

    def _correct(self, masks: torch.Tensor, x: torch.Tensor, features, alpha: float) -> torch.Tensor:
        """Eq. 5 on masks (1, O, Hp, Wp) against the reference; objects added after it are left as they are."""
        ref_x, ref_features, ref_masks = self._reference
        c = self.config.correction
        O_ref = ref_masks.shape[1]
        head = gradient_correct(self.net, masks[:, :O_ref], x, features, ref_x, ref_features, ref_masks, c.N, alpha, c.gamma)
        return torch.cat([head, masks[:, O_ref:]], 1)

    def _remember(self, x, masks, features, user: bool, first: bool) -> None:
        mem = self.config.memory
        if first and not mem.use_first:
            kind = "temp"
        elif first:
            kind = "first"
        elif user:
            kind = "user"
        elif mem.use_every_k and self.frame_index % mem.K == 0:
            kind = "periodic"
        elif mem.use_previous:
            kind = "temp"
        else:
            return
        with torch.no_grad(), self._autocast():
            key, value = self.net.memorize(x, masks, features)
        O = masks.shape[1]
        entry = MemoryEntry(self.frame_index, kind, key[0].float(), value[0].float(), torch.ones(O, dtype=torch.bool, device=value.device))
        if kind == "temp":
            self.memory.set_temp(entry)
        else:
            self.memory.add(entry)

    def labels(self, probs: torch.Tensor) -> np.ndarray:
        """(O+1, H, W) probabilities -> (H, W) uint8 map of object ids (0 = background)."""
        lut = torch.tensor([0] + self.object_ids, dtype=torch.uint8)
        return lut[probs.argmax(0)].numpy()


def propagate_both_ways(make_engine, frames, mask, mask_frame: int = 0):
    """Segment a whole video from a mask drawn on any frame: forward from ``mask_frame`` to the end, then
    backward from it to the first frame, each pass with a fresh engine from ``make_engine()``.

    ``frames`` iterates over ``(key, frame)`` in video order (streamed: only the frames before
    ``mask_frame`` are kept, for the backward pass). Yields ``(key, frame, labels)`` with labels the (H, W)
    uint8 id map, in processing order; the drawn frame is yielded once, by the forward pass.
    """
    engine = make_engine()
    head, anchor, count = [], None, 0
    for i, (key, frame) in enumerate(frames):
        count = i + 1
        if i < mask_frame:
            head.append((key, frame))
            continue
        probs = engine.step(frame, mask if i == mask_frame else None)
        if i == mask_frame:
            anchor = frame
        yield key, frame, engine.labels(probs)
    if anchor is None:
        raise InputError(f"the mask is drawn on frame {mask_frame} but the video has {count} frames (0..{count - 1})")
    if head:
        del engine  # free the forward pass's memory before the backward one
        engine = make_engine()
        engine.step(anchor, mask)
        for key, frame in reversed(head):
            yield key, frame, engine.labels(engine.step(frame))
