"""The inference engine: one object per video owns all state; the network stays stateless.
``step(frame, mask=None)`` per frame, in order; ``remove(ids)`` between steps.

The state, each part with one job:
- ``geometry``: the frame's size <-> the processing size (short side ``InferenceConfig.size``, padded to a
  multiple of 16), set by the first frame, with a guard on the memory one read needs;
- ``objects`` (``ObjectManager``): the ids followed, in row order, and each one's correction reference;
- ``memory`` (``MemoryBank``): the memorised frames, with per-object validity;
- ``frame_index``.
A step reads the given mask (``_given``), predicts from memory (``_predict``), pastes the given objects,
corrects on schedule (``_correction_rates``, ``_correct``), scores the written mask by the cycle check when
asked (``_score``, see ``confidence``), memorises what it writes (``_remember``) and returns the
probabilities at the frame's size (``_output``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import InferenceConfig
from ..cycle.confidence import reference_iou
from ..cycle.correction import gradient_correct, normalize_objects
from ..errors import InputError
from ..model.aggregation import soft_aggregate
from ..model.geometry import Geometry
from ..model.network import CycleVOSNet
from ..runtime.device import free_memory
from ..runtime.precision import Precision, pick_precision
from .memory import MemoryBank
from .objects import MAX_OBJECTS, ObjectManager, Reference, check_mask

__all__ = ["InferenceCore", "MAX_OBJECTS", "box_shaped", "propagate_both_ways"]


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


@dataclass
class GivenMask:
    """A mask given with a frame: its object ids, their masks at the frame's size and at the processing
    size, and whether it is a coarse (box) hint rather than a precise mask."""

    ids: list[int]
    onehot: torch.Tensor  # (G, H, W) bool
    soft: torch.Tensor  # (1, G, Hp, Wp)
    coarse: bool


class InferenceCore:
    """Propagates the objects of a mask through a video, one ``step`` per frame.

    ``step(frame)`` returns the probabilities of (background, objects...) as a (O+1, H, W) float tensor
    on the CPU, at the frame's size, rows in the order of ``object_ids``; ``labels(probs)`` turns them
    into an id map. A mask on the first frame adds its objects; a mask on a later frame adds new objects
    and replaces the prediction of the objects it contains, and goes into memory. A precise mask becomes
    the correction reference of its objects; a box-shaped one (``coarse``, detected when not given) is
    corrected before it goes into memory, as in the paper's Table 5. With correction on, the corrected
    mask is both what is returned and what goes into memory.
    """

    def __init__(
        self,
        net: CycleVOSNet,
        config: InferenceConfig | None = None,
        device: torch.device | None = None,
        precision: Precision | None = None,
    ):
        self.config = config or InferenceConfig()
        self.device = device or next(net.parameters()).device
        self.precision = precision or pick_precision(self.device, self.config.precision)
        with torch.inference_mode(False):  # weights stay ordinary tensors: correction differentiates through them
            net = net.eval().to(memory_format=torch.channels_last)  # the layout oneDNN/cuDNN convolve fastest
        self.net = self.precision.network(net)
        self.reset()

    def reset(self) -> None:
        self.objects = ObjectManager()
        self.memory = MemoryBank(
            self.config.memory,
            shared_key=self.net.config.memory_encoder == "fused",
            dtype=self.precision.dtype or torch.float32,
        )
        self.frame_index = -1
        self.geometry: Geometry | None = None  # set by the first frame
        self.scores: dict[int, float] = {}  # cycle confidence of the last step, {object id: score}; {} when not scored
        self.recent: Reference | None = None  # the latest memorised frame and its written masks (confidence)

    @property
    def object_ids(self) -> list[int]:
        return self.objects.ids

    def remove(self, ids) -> None:
        """Stop following the objects ``ids`` from the next frame on (an unknown id is an error)."""
        self.memory.remove_objects(self.objects.remove([int(i) for i in ids]))

    # the step ---------------------------------------------------------------------------------
    def step(self, frame, mask=None, coarse: bool | None = None) -> torch.Tensor:
        """Process the next frame; ``mask`` is an optional (H, W) map of object ids on this frame. A bad
        frame or mask raises ``InputError`` and leaves the engine as it was."""
        first = self.frame_index < 0
        if mask is None and first:
            raise InputError("the first frame needs a mask of the objects to follow")
        geo = self.geometry or self._geometry_for(frame)
        x = geo.frame_in(frame, self.device).contiguous(memory_format=torch.channels_last)  # (1, 3, Hp, Wp)
        given = self._given(mask, geo, first, coarse) if mask is not None else None
        if given is not None:  # the first change of state: an error above leaves the engine as it was
            self.memory.add_objects(len(self.objects.add(given.ids)))
        self.geometry = geo
        self.frame_index += 1
        with torch.no_grad(), self.precision.autocast():
            features = self.net.encode_frame(x)
            masks, probs = self._predict(x, features)  # (1, O, Hp, Wp); (1, O+1, Hp, Wp) or None
        if given is not None:
            masks = self._paste(masks, given)
        rates = self._correction_rates(given)
        if bool(rates.any()):
            masks = self._correct(masks, x, features, rates)
        if given is not None or bool(rates.any()) or probs is None:
            probs = normalize_objects(masks)
        if self.config.memory.hard:  # the label map that is written, as one-hot masks
            O = len(self.objects)
            winner = probs.max(1, keepdim=True).indices  # (1, 1, Hp, Wp); max, not argmax: faster on the CPU
            masks = (winner == torch.arange(1, O + 1, device=winner.device).view(1, O, 1, 1)).to(
                probs.dtype
            )  # (1, O, Hp, Wp)
        self.scores = self._score(masks, x, features) if given is None and self._scoring() else {}
        self._remember(x, masks, features, given, first)
        if given is not None and not given.coarse:
            self.objects.set_reference(self.frame_index, x, features, given.ids, given.soft)
        return self._output(probs, given)

    def _geometry_for(self, frame) -> Geometry:
        """The first frame's geometry, refused when one memory read would not fit in free memory."""
        H, W = frame.shape[0], frame.shape[1]
        geo = Geometry.for_frame(H, W, self.config.size)
        hw = (geo.padded[0] // 16) * (geo.padded[1] // 16)
        need, free = MemoryBank.read_bytes(self.memory.slots, hw), free_memory(self.device)
        if free is not None and need > free // 2:
            raise InputError(
                f"processing {W}x{H} frames at size {self.config.size or 'native'} ({geo.scaled[1]}x{geo.scaled[0]}) needs "
                f"{need / 2**30:.1f} GiB for each memory read, more than half of the {free / 2**30:.1f} GiB free: "
                f"lower the processing size (e.g. 480) or the memory capacity"
            )
        return geo

    def _given(self, mask, geo: Geometry, first: bool, coarse: bool | None) -> GivenMask:
        ids = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        present = check_mask(ids, geo.frame, "the mask")
        ids = torch.from_numpy(ids.astype(np.int64))
        onehot = torch.stack([ids == i for i in present])  # (G, H, W) bool
        if coarse is None:
            coarse = not first and box_shaped(onehot)
        return GivenMask(present, onehot, geo.masks_in(onehot, self.device), bool(coarse))

    def _predict(self, x, features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each object's probability from memory (1, O, Hp, Wp) float32 (0 for objects with no memory
        yet: added on this frame), and the soft aggregation (1, O+1, Hp, Wp) when every object had one."""
        O = len(self.objects)
        masks = torch.zeros(1, O, *self.geometry.padded, device=self.device)
        rows = torch.nonzero(self.memory.holds())[:, 0]
        if len(rows) == 0:
            return masks, None
        keys, values, valid = self.memory.read()
        if len(rows) < O:  # leave out the objects that no memory frame holds
            keys = keys[:, rows] if keys.shape[1] > 1 else keys
            values, valid = values[:, rows], (valid[:, rows] if valid is not None else None)
        logits = self.net.segment(x, keys, values, features, valid)  # (1, n, Hp, Wp)
        probs = soft_aggregate(torch.sigmoid(logits.float()))  # (1, n+1, Hp, Wp)
        masks[:, rows] = probs[:, 1:]
        return masks, (probs if len(rows) == O else None)

    def _paste(self, masks: torch.Tensor, given: GivenMask) -> torch.Tensor:
        """The given objects replace the prediction; their pixels leave every other object."""
        masks = masks * (1 - given.soft.sum(1, keepdim=True).clamp(max=1))
        masks[:, self.objects.rows(given.ids)] = given.soft
        return masks

    def _correction_rates(self, given: GivenMask | None) -> torch.Tensor:
        """Eq. 5's α for each object on this frame (0: not corrected): every K-th frame all objects at
        ``rate``; objects given a coarse mask at ``coarse_rate``; objects given a precise mask never."""
        c = self.config.correction
        rates = torch.zeros(len(self.objects))
        if not c.enabled:
            return rates
        if self.frame_index % c.every == 0:
            rates[:] = c.rate
        if given is not None:
            rates[self.objects.rows(given.ids)] = c.coarse_rate if given.coarse else 0.0
        return rates

    def _correct(self, masks: torch.Tensor, x, features, rates: torch.Tensor) -> torch.Tensor:
        """Eq. 5 on masks (1, O, Hp, Wp), each object against its own reference: the objects that share a
        reference frame are corrected together. Objects without a reference are left as they are."""
        c = self.config.correction
        masks = masks.clone()
        for group in self.objects.reference_groups():
            r = rates[group.rows]
            if not bool(r.any()):
                continue
            ref = group.reference
            masks[:, group.rows] = gradient_correct(
                self.net,
                masks[:, group.rows],
                x,
                features,
                ref_frame=ref.x,
                ref_features=ref.features,
                ref_masks=group.targets,
                steps=c.steps,
                rate=r,
                gamma=c.gamma,
                precision=self.precision,
            )
        return masks

    def _remember(self, x, masks, features, given: GivenMask | None, first: bool) -> None:
        mem = self.config.memory
        if not len(self.objects):
            return  # every object was removed: nothing to remember until one is given again
        if first and not mem.use_first:
            kind = "temp"
        elif first:
            kind = "first"
        elif given is not None:
            kind = "user"
        elif mem.use_every_k and self.frame_index % mem.every == 0:
            kind = "periodic"
        elif mem.use_previous:
            kind = "temp"
        else:
            return
        with torch.no_grad(), self.precision.autocast():
            key, value = self.net.memory_of(*self.net.memorize(x, masks, features))  # (1, Ok, Ck, hw), (1, O, Cv, hw)
        self.memory.write(self.frame_index, kind, key[0], value[0])
        if kind != "temp" and self.config.confidence.enabled and self.config.confidence.reference != "own":
            self.recent = Reference(self.frame_index, x, features, list(self.objects.ids), masks)

    # cycle confidence ---------------------------------------------------------------------------
    def _scoring(self) -> bool:
        c = self.config.confidence
        every = c.every or self.config.correction.every
        return c.enabled and self.frame_index > 0 and self.frame_index % every == 0

    def _score(self, masks: torch.Tensor, x, features) -> dict[int, float]:
        """Each object's cycle score on this frame from its written masks (1, O, Hp, Wp): the IoU of the
        reference masks predicted back from {X_t, Y_t} (Eq. 2) with the references (see ``confidence``)."""
        mode = self.config.confidence.reference
        found: dict[int, list[float]] = {i: [] for i in self.objects.ids}
        pairs = []  # (reference, rows, targets)
        if mode in ("own", "both"):
            pairs += [(g.reference, g.rows, g.targets) for g in self.objects.reference_groups()]
        if mode in ("recent", "both") and self.recent is not None:
            ids = [i for i in self.recent.ids if i in found]
            if ids:
                targets = self.recent.masks[:, [self.recent.ids.index(i) for i in ids]]
                pairs.append((self.recent, self.objects.rows(ids), targets))
        with self.precision.autocast():
            for ref, rows, targets in pairs:
                iou = reference_iou(
                    self.net, masks[:, rows], x, features, ref_x=ref.x, ref_features=ref.features, targets=targets
                )
                for r, v in zip(rows, iou.tolist()):
                    found[self.objects.ids[r]].append(v)
        return {i: sum(v) / len(v) for i, v in found.items() if v}

    def _output(self, probs: torch.Tensor, given: GivenMask | None) -> torch.Tensor:
        """(O+1, H, W) at the frame's size; the given objects come back exactly as given."""
        out = self.geometry.maps_out(probs)
        if given is not None:
            rows = [r + 1 for r in self.objects.rows(given.ids)]
            G = given.onehot.any(0)  # (H, W)
            out[rows] = 0
            out[:, G] = 0
            for r, m in zip(rows, given.onehot):
                out[r][m] = 1
            out[:, ~G] /= out[:, ~G].sum(0).clamp(min=1e-6)
        return out

    def labels(self, probs: torch.Tensor) -> np.ndarray:
        """(O+1, H, W) probabilities -> (H, W) uint8 map of object ids (0 = background)."""
        lut = torch.tensor([0] + self.object_ids, dtype=torch.uint8)
        return lut[probs.max(0).indices].numpy()


def propagate_both_ways(make_engine, frames, keyframes: dict, removals: dict | None = None):
    """Segment a whole video from masks drawn on one or more frames.

    ``keyframes`` maps frame indices to (H, W) id maps. Forward from the earliest keyframe to the end,
    where each later keyframe replaces the prediction of its objects (adding any new one) and goes into
    memory, and ``removals`` ({frame index: [ids]}) stop following objects from that frame on; then
    backward from the earliest keyframe to the first frame, with a fresh engine from ``make_engine()``.

    ``frames`` iterates over ``(key, frame)`` in video order (streamed: only the frames before the earliest
    keyframe are kept, for the backward pass). Yields ``(key, frame, labels, scores)`` with labels the (H, W)
    uint8 id map and scores the engine's cycle confidence ({object id: score}, empty when not scored), in
    processing order; the earliest keyframe is yielded once, by the forward pass.
    """
    if not keyframes:
        raise InputError("no mask given: draw the objects on at least one frame")
    removals = removals or {}
    start = min(keyframes)
    engine = make_engine()
    head, anchor, count = [], None, 0
    for i, (key, frame) in enumerate(frames):
        count = i + 1
        if i < start:
            head.append((key, frame))
            continue
        if i in removals:
            engine.remove(removals[i])
        probs = engine.step(frame, keyframes.get(i))
        if i == start:
            anchor = frame
        yield key, frame, engine.labels(probs), engine.scores
    late = max(list(keyframes) + list(removals))
    if anchor is None or late >= count:
        frame = start if anchor is None else late
        raise InputError(
            f"a mask or removal is given on frame {frame} but the video has {count} frames (0..{count - 1})"
        )
    if head:
        del engine  # free the forward pass's memory before the backward one
        engine = make_engine()
        engine.step(anchor, keyframes[start])
        for key, frame in reversed(head):
            probs = engine.step(frame)
            yield key, frame, engine.labels(probs), engine.scores
