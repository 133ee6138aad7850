"""The STM-cycle network (paper §3.1, built on STM): stateless; the engine owns all inference state.

Frames enter as RGB floats in 0..1 with height and width multiples of 16; masks as soft masks in 0..1.
Shapes: B batch, O objects, Ck/Cv key/value channels, h, w = H/16, W/16. A memory is read as N positions,
the h*w positions of each of its T frames side by side (N = T*h*w): keys (B, Ok, Ck, N), values
(B, O, Cv, N); ``memory_of`` turns one frame's ``memorize`` output into that layout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from . import memory_read
from .decoder import Decoder
from .features import FrameFeatures, per_object
from .memory_encoder import FusedMaskEncoder, second_mask_channel

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


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

    def for_inference(self) -> CycleVOSNet:
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

    def train(self, mode: bool = True) -> CycleVOSNet:
        """Batch-norm statistics of the pretrained encoders stay frozen: training batches are tiny."""
        if mode and self.inference_only:
            raise RuntimeError(
                "this network was loaded for inference (batch norm folded, weights frozen): load it "
                "with load_checkpoint(path, for_inference=False) to train it"
            )
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
        return self.features_of(*self.encoder(self.normalize(frame)))

    def features_of(self, f4: torch.Tensor, f8: torch.Tensor, f16: torch.Tensor) -> FrameFeatures:
        """``encode_frame`` from the encoder's outputs (f4, f8, f16): the heads and the frame-only terms, for a
        caller that keeps the encoder's outputs (test-time adaptation, whose encoder is frozen)."""
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

    # the memory read (``memory_read``), reached through the network by the engine, correction and tests
    affinity_logits = staticmethod(memory_read.affinity_logits)
    affinity = staticmethod(memory_read.affinity)
    read = staticmethod(memory_read.read)
    read_memory = staticmethod(memory_read.read_memory)

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
