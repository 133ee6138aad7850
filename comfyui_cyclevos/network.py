"""The STM-cycle network (paper §3.1, built on STM): stateless; the engine owns all inference state.

Frames enter as RGB floats in 0..1 with height and width multiples of 16; masks as soft masks in 0..1.
Shapes: B batch, O objects, Ck/Cv key/value channels, h, w = H/16, W/16. A memory is read as N positions,
the h*w positions of each of its T frames side by side (N = T*h*w): keys (B, Ok, Ck, N), values
(B, O, Cv, N); ``memory_of`` turns one frame's ``memorize`` output into that layout.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields

import torch
from torch import nn
import torch.nn.functional as F

from .config import ModelConfig

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


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

    def select(self, index) -> "FrameFeatures":
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


def make_backbone(name: str, in_extra: int = 0) -> nn.Module:
    """Encoders return (f4, f8, f16); ``in_extra`` > 0 asks for extra mask input channels (STM memory)."""
    if name == "lite0":
        from .backbones.efficientnet_lite import EfficientNetLite0

        if in_extra:
            raise ValueError("the lite0 encoder only supports memory_encoder='fused'")
        return EfficientNetLite0()
    if name in ("resnet18", "resnet50"):
        from .backbones.resnet import ResNet

        return ResNet(name, in_extra=in_extra)
    raise ValueError(f"unknown encoder {name!r}: choose lite0, resnet18 or resnet50")


class ResBlock(nn.Module):
    """STM's pre-activation residual block (no normalisation)."""

    def __init__(self, cin: int, cout: int | None = None):
        super().__init__()
        cout = cout or cin
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 3, padding=1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu_(self.conv1(F.relu(x))))  # in place where nothing else reads the tensor
        return (x if self.skip is None else self.skip(x)) + r


class SplitConv2d(nn.Conv2d):
    """A 3x3 convolution over the channels of [a, b] (``split`` of them from a), applied by linearity as
    ``first(a) + second(b)`` so that a term depending on one input alone is computed once and reused, or
    as ``alone(a)`` where b is known to be zero.

    With frozen weights (``CycleVOSNet.for_inference``) each half is kept as its own contiguous tensor,
    refreshed when the weight changes (moved, reloaded): oneDNN repacks a sliced weight on every call,
    which cost 17 % of a 128-channel convolution's forward and backward at 1/16 (gradient correction runs
    ``first`` forward and backward on every step). Trainable weights are sliced on every call, so that
    their gradient flows."""

    def __init__(self, split: int, cin: int, cout: int, stride: int = 1):
        super().__init__(cin, cout, 3, stride=stride, padding=1)
        self.split = split
        self._frozen = None  # (weight's identity, first half, second half), made on first use when frozen

    def halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        if w.requires_grad:
            return w[:, : self.split], w[:, self.split :]
        key = (w.data_ptr(), w._version, w.dtype, w.device, w.stride())
        if self._frozen is None or self._frozen[0] != key:
            fmt = torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: correction's graph saves them
                self._frozen = (key, *(h.contiguous(memory_format=fmt) for h in (w[:, : self.split], w[:, self.split :])))
        return self._frozen[1], self._frozen[2]

    def first(self, a: torch.Tensor) -> torch.Tensor:
        """The term of the first ``split`` input channels, without the bias."""
        return F.conv2d(a, self.halves()[0], None, self.stride, 1)

    def second(self, b: torch.Tensor) -> torch.Tensor:
        """The term of the other input channels, with the bias."""
        return F.conv2d(b, self.halves()[1], self.bias, self.stride, 1)

    def alone(self, a: torch.Tensor) -> torch.Tensor:
        """The convolution of [a, 0]: the first term with the bias."""
        return F.conv2d(a, self.halves()[0], self.bias, self.stride, 1)


class Refine(nn.Module):
    """STM's refinement: skip features to ``dim`` channels, plus the upsampled coarser map."""

    def __init__(self, skip_dim: int, coarse_dim: int, dim: int):
        super().__init__()
        self.conv_skip = nn.Conv2d(skip_dim, dim, 3, padding=1)
        self.res_skip = ResBlock(dim)
        self.proj = nn.Conv2d(coarse_dim, dim, 1) if coarse_dim != dim else None
        self.res_out = ResBlock(dim)

    def skip_branch(self, skip: torch.Tensor) -> torch.Tensor:
        return self.res_skip(self.conv_skip(skip))

    def forward(self, s: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """``s`` is ``skip_branch(skip)``, computed once per frame."""
        if self.proj is not None:
            coarse = self.proj(coarse)
        m = s + F.interpolate(coarse, size=s.shape[-2:], mode="bilinear", align_corners=False)
        return self.res_out(m)


@functools.lru_cache(maxsize=16)  # built once per size: Upsample4's backward asks on every correction step
def bilinear_weights(n: int, scale: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n*scale, n): the weights with which ``F.interpolate(mode="bilinear", align_corners=False)``
    upsamples one axis of length n by an integer ``scale`` (each output a mix of its two nearest inputs,
    clamped at the borders)."""
    src = ((torch.arange(n * scale, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(min=0)  # built on the CPU:
    i0 = src.floor().long().clamp(max=n - 1)  # float64 is not on every device (MPS)
    i1 = (i0 + 1).clamp(max=n - 1)
    frac = src - i0
    rows = torch.arange(n * scale)
    a = torch.zeros(n * scale, n, dtype=torch.float64)
    a.index_put_((rows, i0), 1 - frac, accumulate=True)
    a.index_put_((rows, i1), frac, accumulate=True)
    return a.to(device=device, dtype=dtype)


class Upsample4(torch.autograd.Function):
    """x4 bilinear upsampling of (N, C, h, w), as ``F.interpolate``, with a faster backward: the upsampling
    is separable, out = A_h x A_w^T, so its gradient is A_h^T g A_w, two small matrix products, where the
    CPU's own backward scatters pixel by pixel (7 ms vs 2 ms for 5 objects at 240x432: gradient correction
    runs it on every step)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.in_shape, ctx.in_dtype = x.shape, x.dtype
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        h, w = ctx.in_shape[-2:]
        a_h = bilinear_weights(h, 4, g.device, g.dtype)  # (4h, h)
        a_w = bilinear_weights(w, 4, g.device, g.dtype)  # (4w, w)
        return (a_h.T @ g @ a_w).to(ctx.in_dtype)  # (N, C, 4h, 4w) -> (N, C, h, w)


class Decoder(nn.Module):
    """1/16 -> 1/8 -> 1/4 -> one logit per pixel at 1/4 (``STRIDE``), bilinearly upsampled x4 to the input
    size. Its input is STM's [memory readout, query value]; the first convolution splits, by linearity, into
    a readout term (per object) and a value term (per frame, in ``frame_part``)."""

    STRIDE = 4  # the logits' resolution before the upsampling, relative to the input

    def __init__(self, cin: int, skip_dims: tuple[int, int], dims: tuple[int, int, int]):
        super().__init__()
        d16, d8, d4 = dims
        self.conv_in = SplitConv2d(cin // 2, cin, d16)  # [readout, query value], Cv channels each
        self.res_in = ResBlock(d16)
        self.rf8 = Refine(skip_dims[1], d16, d8)
        self.rf4 = Refine(skip_dims[0], d8, d4)
        self.pred = nn.Conv2d(d4, 1, 3, padding=1)

    def frame_part(self, value: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The frame-only terms: the query value's share of the first convolution, with its bias
        (B, d16, h, w), and the skip branches (B, d8, H/8, W/8), (B, d4, H/4, W/4)."""
        return self.conv_in.second(value), self.rf8.skip_branch(f8), self.rf4.skip_branch(f4)

    def forward(self, readout: torch.Tensor, frame_part: tuple[torch.Tensor, ...], upsample: bool = True) -> torch.Tensor:
        """readout (N, Cv, h, w); ``frame_part`` of the N rows' frames, or of one frame shared by all.
        ``upsample`` False returns the logits as predicted, at 1/4 (N, H/4, W/4)."""
        g16, s8, s4 = frame_part
        x = self.conv_in.first(readout) + g16
        x = self.res_in(x)  # (N, d16, h, w)
        x = self.rf8(s8, x)  # (N, d8, H/8, W/8)
        x = self.rf4(s4, x)  # (N, d4, H/4, W/4)
        x = self.pred(F.relu_(x))  # (N, 1, H/4, W/4)
        return Upsample4.apply(x)[:, 0] if upsample else x[:, 0]  # (N, H, W) or (N, H/4, W/4)


class FusedMaskEncoder(nn.Module):
    """Memory value from the frame's own encoder features plus its two mask channels.

    The masks go through two stride-2 convolutions to 1/4 and are fused with the encoder's features at
    1/4, 1/8 and 1/16. Each fusion is a convolution over [mask features, image features]; by linearity
    it splits into a mask term plus an image term, and the image term (``image_part``) is computed once
    per frame. The gradient with respect to the mask (correction, cycle-ERF) never enters the backbone.
    A single object's second channel (the union of the other objects) is empty, so its masks come as one
    channel and the first convolution takes the mask's half alone: gradient correction of one object
    runs about 3 % faster without building, convolving and differentiating a channel of zeros.
    """

    def __init__(self, feat_dims: tuple[int, int, int], value_dim: int):
        super().__init__()
        c4, c8, c16 = feat_dims
        self.stem = nn.Sequential(  # [mask, other objects] -> 1/4
            SplitConv2d(1, 2, 16, stride=2), nn.ReLU(inplace=True), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(inplace=True)
        )
        self.fuse4 = SplitConv2d(16, 16 + c4, 32)  # [mask features, image features]
        self.down8 = nn.Conv2d(32, 48, 3, 2, 1)
        self.fuse8 = SplitConv2d(48, 48 + c8, 64)
        self.down16 = nn.Conv2d(64, 96, 3, 2, 1)
        self.fuse16 = SplitConv2d(96, 96 + c16, value_dim)
        self.res = ResBlock(value_dim)

    def image_part(self, f4: torch.Tensor, f8: torch.Tensor, f16: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Image terms of the three fusions (with their biases): (B, 32, H/4, W/4), (B, 64, H/8, W/8),
        (B, Cv, h, w)."""
        return self.fuse4.second(f4), self.fuse8.second(f8), self.fuse16.second(f16)

    def forward(self, masks2: torch.Tensor, image_part: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # masks2: (N, 2, H, W), or (N, 1, H, W) where the second channel is empty; image_part of the N rows'
        # frames, or of one frame shared by all. The ReLUs work in place on tensors nothing else reads (a
        # convolution's backward needs its input, not its output)
        g4, g8, g16 = image_part
        first = self.stem[0]
        x = first.alone(masks2) if masks2.shape[1] == 1 else first(masks2)
        x = self.stem[1:](x)  # (N, 16, H/4, W/4)
        x = F.relu_(self.fuse4.first(x) + g4)  # (N, 32, H/4, W/4)
        x = F.relu_(self.down8(x))  # (N, 48, H/8, W/8)
        x = F.relu_(self.fuse8.first(x) + g8)  # (N, 64, H/8, W/8)
        x = F.relu_(self.down16(x))  # (N, 96, h, w)
        x = self.fuse16.first(x) + g16  # (N, Cv, h, w)
        return self.res(x)


def second_mask_channel(masks: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, O, H, W) -> (B, O, H, W): the union of the other objects (STM) or the background (STM-cycle).
    Both are clamped to [0, 1] as the originals do: corrected masks may leave that range."""
    if mode == "background":
        return (1.0 - masks).clamp(0.0, 1.0)
    if mode == "others":
        return (masks.sum(1, keepdim=True) - masks).clamp(0.0, 1.0)
    raise ValueError(f"unknown second_mask {mode!r}: choose 'others' or 'background'")


ODDS_CLAMP = 1e-7  # soft aggregation clamps each probability to [ODDS_CLAMP, 1 - ODDS_CLAMP]


def soft_aggregate(probs: torch.Tensor) -> torch.Tensor:
    """STM's soft aggregation of per-object foreground probabilities (B, O, H, W) into a distribution
    over background + objects (B, O+1, H, W) that sums to 1 at every pixel.

    STM takes the softmax of the logits log(p / (1 - p)); the exponential undoes the logarithm, so this
    normalises the odds p / (1 - p) directly: the same values in fewer full-resolution passes (gradient
    correction runs it forward and backward on every step)."""
    odds = aggregation_odds(probs)[1]
    return odds / odds.sum(1, keepdim=True)


def aggregation_odds(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object probabilities (B, O, H, W) -> the background's probability prod(1 - p) (B, 1, H, W) and
    the odds of [background, objects], each clamped to [ODDS_CLAMP, 1 - ODDS_CLAMP] first (B, O+1, H, W):
    what ``soft_aggregate`` normalises, and ``losses.aggregate_loss`` keeps for its gradient."""
    bg = torch.prod(1.0 - probs, dim=1, keepdim=True)
    em = torch.cat([bg, probs], 1).clamp(ODDS_CLAMP, 1 - ODDS_CLAMP)
    return bg, em / (1 - em)  # odds at most 1e7: a sum of them cannot overflow float32


class CycleVOSNet(nn.Module):
    """Stateless STM-cycle network: ``memorize`` and ``segment`` are all the engine, the training loop,
    gradient correction and cycle-ERF need."""

    inference_only = False  # set by for_inference

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        if config.memory_encoder not in ("fused", "stm"):
            raise ValueError(f"unknown memory_encoder {config.memory_encoder!r}: choose fused or stm")
        self.encoder = make_backbone(config.encoder)
        c4, c8, c16 = self.encoder.channels
        self.key_q = nn.Conv2d(c16, config.key_dim, 3, padding=1)
        self.value_q = nn.Conv2d(c16, config.value_dim, 3, padding=1)
        if config.memory_encoder == "fused":
            self.mask_encoder = FusedMaskEncoder((c4, c8, c16), config.value_dim)
        else:
            self.memory_backbone = make_backbone(config.encoder, in_extra=2)
            self.key_m = nn.Conv2d(c16, config.key_dim, 3, padding=1)
            self.value_m = nn.Conv2d(c16, config.value_dim, 3, padding=1)
        self.decoder = Decoder(2 * config.value_dim, (c4, c8), config.decoder_dims)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def for_inference(self) -> "CycleVOSNet":
        """Inference only: the encoder's batch norms folded into its convolutions where the backbone can
        (Lite0; the ResNets keep theirs; the outputs are the same up to rounding), and every parameter
        frozen, so that gradient correction and cycle-ERF, which differentiate with respect to the masks
        alone, build no graph for the weights. The network can no longer be trained or saved."""
        with torch.inference_mode(False):
            if hasattr(self.encoder, "fold_batchnorm"):
                self.encoder.fold_batchnorm()
            self.requires_grad_(False)
        self.inference_only = True
        return self.eval()

    def train(self, mode: bool = True) -> "CycleVOSNet":
        """Batch-norm statistics of the pretrained encoders stay frozen: training batches are tiny."""
        if mode and self.inference_only:
            raise RuntimeError("this network was loaded for inference (batch norm folded, weights frozen): load it "
                               "with load_checkpoint(path, for_inference=False) to train it")
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def normalize(self, frame: torch.Tensor) -> torch.Tensor:
        if frame.shape[-2] % 16 or frame.shape[-1] % 16:
            raise ValueError(f"frame size {tuple(frame.shape[-2:])} is not a multiple of 16")
        return (frame - self.mean) / self.std

    def encode_frame(self, frame: torch.Tensor) -> FrameFeatures:
        """Query encoder: frame (B, 3, H, W) -> key and value at 1/16, skips at 1/8 and 1/4, and the
        frame-only terms of the decoder and of the fused memory encoder."""
        f4, f8, f16 = self.encoder(self.normalize(frame))
        image_part = self.mask_encoder.image_part(f4, f8, f16) if self.config.memory_encoder == "fused" else None
        decoder_part = self.decoder.frame_part(self.value_q(f16), f8, f4)
        return FrameFeatures(self.key_q(f16), f16, f8, f4, decoder_part, image_part)

    def memorize(
        self, frame: torch.Tensor, masks: torch.Tensor, features: FrameFeatures | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory encoder: frame (B, 3, H, W) and soft masks (B, O, H, W) -> keys (B, Ok, Ck, h, w) and
        values (B, O, Cv, h, w). Ok is 1 for the fused encoder, whose key is the frame's query key and is
        shared by all objects, and O for the STM encoder. ``features`` (``encode_frame`` of the same
        frame) saves the backbone pass of the fused encoder."""
        B, O, H, W = masks.shape
        if O == 1 and self.config.second_mask == "others" and self.config.memory_encoder == "fused":
            masks2 = masks.reshape(B, 1, H, W)  # no other object: the second channel would be zeros
        else:
            masks2 = torch.stack([masks, second_mask_channel(masks, self.config.second_mask)], 2)  # (B, O, 2, H, W)
            masks2 = masks2.flatten(0, 1)  # (B*O, 2, H, W)
        if self.config.memory_encoder == "fused":
            if features is None:
                features = self.encode_frame(frame)
            image_part = tuple(per_object(t, O) for t in features.image_part)  # (B*O or 1, C, ...)
            value = self.mask_encoder(masks2, image_part)  # (B*O, Cv, h, w)
            return features.key.unsqueeze(1), value.view(B, O, *value.shape[1:])
        x = self.normalize(frame).repeat_interleave(O, dim=0)  # (B*O, 3, H, W)
        _, _, f16 = self.memory_backbone(x, masks2)  # (B*O, C16, h, w)
        key, value = self.key_m(f16), self.value_m(f16)
        return key.view(B, O, *key.shape[1:]), value.view(B, O, *value.shape[1:])

    @staticmethod
    def memory_of(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``memorize`` output (B, Ok, Ck, h, w), (B, O, Cv, h, w) -> a one-frame memory (B, Ok, Ck, h*w),
        (B, O, Cv, h*w); frames concatenated along the last dimension make a longer memory."""
        return key.flatten(-2), value.flatten(-2)

    @staticmethod
    def affinity_logits(mem_keys: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
        """k_q^T k_m / sqrt(Ck) in float32: mem_keys (B, Ok, Ck, N), query_key (B, Ck, h, w) -> (B, Ok, h*w, N),
        query positions first, so that the softmax over the memory runs along contiguous rows (over the
        strided axis it took 18 ms for a 16-frame memory at 240p, 6 ms along rows)."""
        kq = query_key.float().flatten(2).transpose(-1, -2)[:, None]  # (B, 1, hw, Ck)
        return torch.matmul(kq, mem_keys.float()) / math.sqrt(mem_keys.shape[2])

    @staticmethod
    def affinity(mem_keys: torch.Tensor, query_key: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Memory read weights (STM): softmax over the N memory positions of k_m^T k_q / sqrt(Ck).

        mem_keys (B, Ok, Ck, N), query_key (B, Ck, h, w) -> (B, Ok', N, h*w). The logits and the softmax run
        in float32 under any autocast: a softmax over thousands of positions shifts visibly when its logits
        are rounded to 8 bits of mantissa. ``valid`` (B, Ok, N) bool leaves out positions that hold no value
        (a memory frame from before an object was added); a row with no valid position gets zero weights."""
        with torch.autocast(mem_keys.device.type, enabled=False):
            logits = CycleVOSNet.affinity_logits(mem_keys, query_key)  # (B, Ok, hw, N)
            if valid is not None:
                logits = logits.masked_fill(~valid[..., None, :], float("-inf"))
            p = torch.softmax(logits, dim=-1)
            if valid is not None:
                p = p.nan_to_num_(0.0)
            return p.transpose(-1, -2)  # (B, Ok, N, hw), a view: the matrix products take it as it is

    @staticmethod
    def read(p: torch.Tensor, mem_values: torch.Tensor) -> torch.Tensor:
        """Weighted sum of memory values: p (B, 1 or O, N, hw), mem_values (B, O, Cv, N) -> (B, O, Cv, hw)."""
        B, O, Cv, N = mem_values.shape
        p = p.to(mem_values.dtype)  # the float32 weights meet values stored in the compute dtype
        if p.shape[1] == 1:  # weights shared by all objects: one matrix product for all of them
            return torch.matmul(mem_values.reshape(B, O * Cv, N), p[:, 0]).view(B, O, Cv, -1)
        return torch.matmul(mem_values, p)  # (B, O, Cv, hw)

    def read_memory(self, keys: torch.Tensor, values: torch.Tensor, query_key: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Each object's readout (B, O, Cv, hw) from keys (B, Ok, Ck, N), values (B, O, Cv, N) and
        ``valid`` (B, O, N) bool (None: every position holds every object).

        With keys shared by all objects (Ok = 1) the read costs one exponentiated affinity whatever the
        objects hold: each object's softmax over its own positions is the shared exp(logits - max)
        renormalised by its sum over those positions (the shift cancels), so objects added on later frames
        do not turn the read into one softmax per object. An object without memory reads zeros."""
        if valid is None or bool(valid.all()):
            return self.read(self.affinity(keys, query_key), values)
        if keys.shape[1] > 1:  # one key per object (STM's memory encoder): per-object weights anyway
            return self.read(self.affinity(keys, query_key, valid), values)
        B, O, Cv, N = values.shape
        with torch.autocast(keys.device.type, enabled=False):
            logits = self.affinity_logits(keys, query_key)[:, 0]  # (B, hw, N)
            e = torch.exp(logits - logits.amax(dim=-1, keepdim=True)).transpose(-1, -2)  # (B, N, hw)
            norm = torch.matmul(valid.float(), e)  # (B, O, hw): each object's softmax denominator
            held = (values * valid[:, :, None]).reshape(B, O * Cv, N)  # positions an object does not hold add 0
            readout = torch.matmul(held, e.to(values.dtype)).view(B, O, Cv, -1).float()
            readout = readout / norm.clamp_min(torch.finfo(torch.float32).tiny)[:, :, None]
        return readout.to(values.dtype)

    def segment(
        self,
        frame: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        features: FrameFeatures | None = None,
        valid: torch.Tensor | None = None,
        affinity: torch.Tensor | None = None,
        upsample: bool = True,
    ) -> torch.Tensor:
        """Predict every object on ``frame`` from memory: keys (B, Ok, Ck, N), values (B, O, Cv, N) ->
        per-object logits (B, O, H, W), or at the decoder's 1/4 without ``upsample``. Combine objects with
        ``soft_aggregate``. ``valid`` (B, O, N) as in ``read_memory``. ``affinity`` (from ``affinity``) may be
        passed when the keys are known not to change (the fused encoder's keys do not depend on the mask:
        gradient correction and cycle-ERF reuse it)."""
        if features is None:
            features = self.encode_frame(frame)
        B, O = values.shape[:2]
        h, w = features.key.shape[-2:]
        if affinity is not None:
            readout = self.read(affinity, values)
        else:
            readout = self.read_memory(keys, values, features.key, valid)  # (B, O, Cv, hw)
        readout = readout.reshape(B * O, -1, h, w).to(features.key.dtype)  # (B*O, Cv, h, w)
        logits = self.decoder(readout, tuple(per_object(t, O) for t in features.decoder_part), upsample)  # (B*O, H, W)
        return logits.view(B, O, *logits.shape[-2:])
