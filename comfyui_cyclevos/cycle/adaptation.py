"""Test-time cyclic adaptation: a copy of the network fine-tuned on one video with the cycle loss alone.

Why it needs no labels past the keyframes (paper §3.2, Eq. 2-3): the cycle mechanism scores a prediction by
how well it explains the *given* mask. Forward from a keyframe r with its mask Y_r, the network predicts
Y^_t1 and Y^_t2 (each memorised undetached, as in training), and from the memory of one predicted frame
alone, {X_t, Y^_t}, it predicts the keyframe back (Eq. 2); Eq. 4 of each back-prediction against Y_r is the
loss (the cycle half of Eq. 3: there is no label at t1, t2 for the forward half). Descending it on the
video's own frames adapts the weights to this video's object and background, as test-time training with
mask-cycle consistency does for STCN (Bertrand et al., NeurIPS 2023).

Every keyframe is a reference: a clip starts at a keyframe and runs forward or backward in time, so the
masks an artist adds on later frames teach the network too. The clips' t1 are spread evenly over the video
(``spread_positions``): with a few dozen clips, independent draws leave parts of the video unseen, and the
result then depends on which parts the seed happened to draw. Several objects adapt jointly: each clip's
objects are soft-aggregated as in training (``training.train.CycleLoss``), Eq. 4 averaged over the objects
drawn on its keyframe.

Cost: frames are kept as uint8 at the processing size (never all frames as float), and the encoder is
frozen (``AdaptConfig.parts`` trains the mask encoder and the decoder by default), so each frame's encoder
output is computed once, on first use, and reused by every step; only the trained parts run per step.
With ``encoder_late`` the Lite0 encoder's blocks after 1/4 are trained and its 1/4 output is cached.

The caller's network is never changed: the adapted network is a copy, frozen and in eval mode again when
it is returned. Sampling uses its own generator seeded by ``AdaptConfig.seed``: a seed gives one result.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import AdaptConfig
from ..errors import InputError
from ..model.aggregation import soft_aggregate
from ..model.features import FrameFeatures
from ..model.geometry import Geometry
from ..model.losses import mask_loss
from ..model.network import CycleVOSNet
from ..runtime.precision import Precision

CLIP_LENGTH = 3  # the reference and two later frames, the paper's training clip


@dataclass
class AdaptResult:
    """The adapted copy, the cycle loss of every step, and the seconds spent (of which encoding frames)."""

    net: CycleVOSNet
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    encode_seconds: float = 0.0


def _trained_modules(net: CycleVOSNet, parts: Iterable[str]) -> list[torch.nn.Module]:
    modules = []
    for part in parts:
        if part == "decoder":
            modules.append(net.decoder)
        elif part == "mask_encoder":
            modules.append(net.mask_encoder)
        elif part == "heads":
            modules += [net.key_q, net.value_q]
        elif part == "encoder_late":
            if not hasattr(net.encoder, "early_modules"):
                raise InputError("encoder_late adaptation needs the lite0 encoder: drop encoder_late")
            early = {id(m) for m in net.encoder.early_modules()}
            modules += [b for b in net.encoder._blocks if id(b) not in early]
    return modules


class _EncoderCache:
    """Each (frame, flip)'s frozen encoder output, computed on first use: (f4, f8, f16) with a frozen
    encoder; with ``encoder_late`` (Lite0 only) the 1/4 output, the later blocks running per step."""

    def __init__(self, net: CycleVOSNet, frames: list[torch.Tensor], *, late_trained: bool):
        self.net, self.frames, self.late_trained = net, frames, late_trained
        self.store: dict[tuple[int, bool], tuple[torch.Tensor, ...]] = {}
        self.seconds = 0.0

    def _image(self, t: int, flip: bool) -> torch.Tensor:
        x = self.frames[t].float().div_(255)[None]  # (1, 3, Hp, Wp)
        return x.flip(-1) if flip else x

    def _frozen(self, t: int, flip: bool) -> tuple[torch.Tensor, ...]:
        if (t, flip) not in self.store:
            start = time.perf_counter()
            with torch.no_grad():
                out = self.net.encoder(self.net.normalize(self._image(t, flip)))  # (f4, f8, f16)
            self.store[(t, flip)] = out[:1] if self.late_trained else out
            self.seconds += time.perf_counter() - start
        return self.store[(t, flip)]

    def features(self, ts: list[int], flips: list[bool]) -> FrameFeatures:
        """``encode_frame`` of the frames ``ts`` batched along dim 0, built from the cached outputs."""
        parts = [self._frozen(t, f) for t, f in zip(ts, flips)]
        f4 = torch.cat([p[0] for p in parts])
        if self.late_trained:  # Lite0: blocks 3.. from the cached 1/4 output, the 1/8 tap after block 4
            x, f8, enc = f4, None, self.net.encoder
            for i in range(3, len(enc._blocks)):
                x = enc._blocks[i](x)
                if i == 4:
                    f8 = x
            f16 = x
        else:
            f8, f16 = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        return self.net.features_of(f4, f8, f16)


def _prepare(frames: Iterable, keyframes: Mapping[int, np.ndarray], *, size: int, device: torch.device):
    """Stream ``frames`` ((H, W, 3) uint8) into uint8 tensors at the processing size, and the keyframes into
    soft masks there: (frames, object ids, {k: (O, Hp, Wp)}, {k: (O,) bool, the objects drawn on k})."""
    geo, kept = None, []
    for frame in frames:
        geo = geo or Geometry.for_frame(frame.shape[0], frame.shape[1], size)
        x = geo.frame_in(frame, device)  # (1, 3, Hp, Wp) float, one frame at a time
        kept.append(x[0].mul_(255).round_().to(torch.uint8))
    if geo is None:
        raise InputError("adaptation got no frames")
    ids = sorted({int(i) for m in keyframes.values() for i in np.unique(m) if i != 0})
    masks, drawn = {}, {}
    for k, m in keyframes.items():
        onehot = torch.stack([torch.from_numpy(np.asarray(m) == i) for i in ids]).float()  # (O, H, W)
        masks[k] = geo.masks_in(onehot, device)[0]  # (O, Hp, Wp)
        drawn[k] = onehot.flatten(1).any(1).to(device)
    return kept, ids, masks, drawn


def spread_positions(count: int, generator: torch.Generator) -> list[float]:
    """``count`` positions in [0, 1), one in each of ``count`` equal strata, in random order (a Latin
    hypercube): over the whole adaptation t1 visits every part of the video evenly, where independent draws
    leave gaps and clusters that a few dozen clips do not average out."""
    order = torch.randperm(count, generator=generator).double()
    return ((order + torch.rand(count, generator=generator, dtype=torch.float64)) / count).tolist()


def sample_clips(
    frames: int,
    keys: list[int],
    *,
    batch: int,
    max_gap: int,
    flip: bool,
    generator: torch.Generator,
    positions: list[float] | None = None,
):
    """``batch`` clips, each (frame indices starting at a keyframe, flipped, the keyframe): a keyframe, a
    direction with frames on that side, t1 on that side at ``positions[i]`` of its length (uniform when
    None), t2 1..``max_gap`` frames further."""
    clips = []
    for i in range(batch):
        k = keys[int(torch.randint(len(keys), (1,), generator=generator))]
        ways = [d for d in (1, -1) if 0 <= k + d < frames]
        d = ways[int(torch.randint(len(ways), (1,), generator=generator))]
        side = frames - 1 - k if d > 0 else k
        u = torch.rand(1, generator=generator, dtype=torch.float64).item() if positions is None else positions[i]
        t1 = k + d * (1 + min(side - 1, int(u * side)))
        t2 = min(max(t1 + d * (1 + int(torch.randint(max_gap, (1,), generator=generator))), 0), frames - 1)
        flipped = bool(flip and torch.rand(1, generator=generator).item() < 0.5)
        clips.append(([k, t1, t2], flipped, k))
    return clips


def cycle_loss(
    net: CycleVOSNet, feats: list[FrameFeatures], ref_masks: torch.Tensor, drawn: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Eq. 2-4 on a batch of clips: ``feats[i]`` the features of every clip's i-th frame (0: the keyframe),
    ``ref_masks`` (B, O, Hp, Wp) the keyframes' masks, ``drawn`` (B, O) the objects on them. Forward with the
    memory growing (each prediction memorised undetached, §3.2); after each frame the keyframe is predicted
    back from that frame's memory alone and scored with Eq. 4. The mean over the back-predictions."""
    live = drawn[:, :, None, None].float()
    k, v = net.memory_of(*net.memorize(None, ref_masks, feats[0]))
    keys, values, total = [k], [v], 0.0
    for ft in feats[1:]:
        logits = net.segment(None, torch.cat(keys, -1), torch.cat(values, -1), ft)  # (B, O, Hp, Wp)
        probs = soft_aggregate(torch.sigmoid(logits.float()) * live)[:, 1:]
        k, v = net.memory_of(*net.memorize(None, probs, ft))
        keys.append(k)
        values.append(v)
        back = net.segment(None, k, v, feats[0])  # Eq. 2: the keyframe from {X_t, Y^_t} alone
        back = soft_aggregate(torch.sigmoid(back.float()) * live)[:, 1:]
        total = total + mask_loss(back, ref_masks, gamma, drawn)
    return total / (len(feats) - 1)


def adapt(
    net: CycleVOSNet,
    frames: Iterable,
    keyframes: Mapping[int, np.ndarray],
    *,
    config: AdaptConfig,
    size: int = 240,
    device: torch.device | None = None,
    precision: Precision | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AdaptResult:
    """A copy of ``net`` adapted to one video (see the module's docstring); ``net`` is left as it was.

    ``frames``: the video's (H, W, 3) uint8 frames, streamed once; ``keyframes``: {frame index: (H, W) id
    map, 0 background}; ``size``: the engine's processing short side. ``progress(step, steps)`` is called
    before each step and after the last, and may raise to stop (a cancel)."""
    if net.config.memory_encoder != "fused":
        raise InputError("test-time adaptation needs the fused memory encoder (the shipped weights' kind)")
    start = time.perf_counter()
    device = device or next(net.parameters()).device
    precision = precision or Precision(device)
    with torch.inference_mode(False):
        kept, _, masks, drawn = _prepare(frames, keyframes, size=size, device=device)
        keys = sorted(k for k in masks if 0 <= k < len(kept))
        if not keys:
            raise InputError(f"adaptation needs a keyframe inside the video's {len(kept)} frames")
        # the engine's layout, whatever the caller's network has: one seed gives one result to the last bit
        work = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)
        work.requires_grad_(False)
        params = [p for m in _trained_modules(work, config.parts) for p in m.parameters()]
        for p in params:
            p.requires_grad_(True)
        result = AdaptResult(work)
        if len(kept) > 1 and config.steps:
            anchor = [p.detach().clone() for p in params] if config.l2sp else None
            optimiser = torch.optim.Adam(params, lr=config.rate)
            generator = torch.Generator().manual_seed(config.seed)
            cache = _EncoderCache(work, kept, late_trained="encoder_late" in config.parts)
            positions = spread_positions(config.steps * config.batch, generator)  # every clip's t1
            for step in range(config.steps):
                if progress is not None:
                    progress(step, config.steps)
                B = config.batch
                clips = sample_clips(
                    len(kept),
                    keys,
                    batch=B,
                    max_gap=config.max_gap,
                    flip=config.flip,
                    generator=generator,
                    positions=positions[step * B : (step + 1) * B],
                )
                with precision.autocast():
                    every = cache.features(
                        [c[0][i] for i in range(CLIP_LENGTH) for c in clips],  # frame i of every clip, i-major
                        [c[1] for _ in range(CLIP_LENGTH) for c in clips],
                    )
                    feats = [every.select(slice(i * B, (i + 1) * B)) for i in range(CLIP_LENGTH)]
                    ref = torch.stack([masks[k].flip(-1) if f else masks[k] for _, f, k in clips])  # (B, O, Hp, Wp)
                    loss = cycle_loss(work, feats, ref, torch.stack([drawn[k] for *_, k in clips]), config.gamma)
                total = loss
                if anchor is not None:  # L2-SP: a pull toward the original weights
                    total = total + 0.5 * config.l2sp * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
                optimiser.zero_grad(set_to_none=True)
                total.backward()
                optimiser.step()
                result.losses.append(float(loss.detach()))
            result.encode_seconds = cache.seconds
            if progress is not None:
                progress(config.steps, config.steps)
        work.requires_grad_(False)
        result.seconds = time.perf_counter() - start
    return result
