"""Convert the released STM (seoungwugoh/STM) and STM-cycle (lyxok1/STM-Training) checkpoints.

Every source key is placed by an explicit rename table (module prefix -> our module prefix, the rest of
the name unchanged) and must land on one of our keys with the same shape; every one of our keys must be
filled. The only transforms: STM's 2-channel ``pred2`` becomes our 1-logit ``pred`` (softmax over two
logits = sigmoid of their difference), the encoders' ``mean``/``std`` buffers are checked against the
ImageNet constants our network normalises with and dropped, and BatchNorm ``num_batches_tracked``
counters missing from old files start at 0 (eval-mode BatchNorm never reads them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import WeightsError
from .checkpoint import check_finite, save_checkpoint
from .network import _MEAN, _STD, CycleVOSNet

SOURCES = ("stm", "stm-cycle")

# Source module prefix -> our module prefix. The name after the prefix is kept as is (ResNet stages and
# residual blocks use the same inner names on both sides).
_RENAMES: dict[str, str] = {
    "Encoder_Q.conv1.": "encoder.conv1.",
    "Encoder_Q.bn1.": "encoder.bn1.",
    "Encoder_Q.res2.": "encoder.layer1.",
    "Encoder_Q.res3.": "encoder.layer2.",
    "Encoder_Q.res4.": "encoder.layer3.",
    "Encoder_M.conv1.": "memory_backbone.conv1.",
    "Encoder_M.conv1_m.": "memory_backbone.conv1_m.",
    "Encoder_M.bn1.": "memory_backbone.bn1.",
    "Encoder_M.res2.": "memory_backbone.layer1.",
    "Encoder_M.res3.": "memory_backbone.layer2.",
    "Encoder_M.res4.": "memory_backbone.layer3.",
    "KV_Q_r4.Key.": "key_q.",
    "KV_Q_r4.Value.": "value_q.",
    "KV_M_r4.Key.": "key_m.",
    "KV_M_r4.Value.": "value_m.",
    "Decoder.convFM.": "decoder.conv_in.",
    "Decoder.ResMM.": "decoder.res_in.",
    "Decoder.RF3.convFS.": "decoder.rf8.conv_skip.",
    "Decoder.RF3.ResFS.": "decoder.rf8.res_skip.",
    "Decoder.RF3.ResMM.": "decoder.rf8.res_out.",
    "Decoder.RF2.convFS.": "decoder.rf4.conv_skip.",
    "Decoder.RF2.ResFS.": "decoder.rf4.res_skip.",
    "Decoder.RF2.ResMM.": "decoder.rf4.res_out.",
    "Decoder.pred2.": "decoder.pred.",
}
# The memory encoder's second mask stem: STM feeds the other objects, STM-cycle the background.
_SECOND_STEM = {"stm": "Encoder_M.conv1_o.", "stm-cycle": "Encoder_M.conv1_bg."}
_SECOND_MASK = {"stm": "others", "stm-cycle": "background"}
# Normalisation buffers of both encoders: checked, then dropped.
_NORM_BUFFERS = {f"Encoder_{e}.{n}": c for e in "MQ" for n, c in (("mean", _MEAN), ("std", _STD))}
# Query encoder's res4 width -> backbone.
_ENCODER_BY_WIDTH = {1024: "resnet50", 256: "resnet18"}


def _read_state(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state_dict and the file's other top-level entries (STM-cycle: epoch, max_skip)."""
    if not src.is_file():
        raise WeightsError(f"weights file {src} not found")
    if src.stat().st_size == 0:
        raise WeightsError(f"weights file {src} is empty (0 bytes): download it again")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot read {src} as a PyTorch checkpoint ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})"
        ) from None
    if not isinstance(payload, dict):
        raise WeightsError(f"{src} holds a {type(payload).__name__}, not a state_dict")
    extra: dict = {}
    if isinstance(payload.get("state_dict"), dict):  # STM-Training: {'epoch', 'state_dict', 'max_skip'}
        extra = {k: payload[k] for k in ("epoch", "max_skip") if k in payload}
        others = sorted(str(k) for k in payload if k not in ("state_dict", "epoch", "max_skip"))
        if others:
            extra["ignored_entries"] = others  # named in the report, never silently
        payload = payload["state_dict"]
    state = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if len(state) != len(payload) or not state:
        raise WeightsError(f"{src} is not a state_dict of tensors")
    # nn.DataParallel's prefix (STM's release): all keys or none.
    prefixed = [k.startswith("module.") for k in state]
    if all(prefixed):
        state = {k[len("module.") :]: v for k, v in state.items()}
    elif any(prefixed):
        raise WeightsError(f"{src} mixes 'module.'-prefixed and plain keys")
    return state, extra


def _config_from_shapes(state: dict[str, torch.Tensor], source: str, src: Path) -> ModelConfig:
    """Backbone, key/value widths and decoder width, all read from the weights' shapes."""
    need = ("KV_Q_r4.Key.weight", "KV_Q_r4.Value.weight", "Decoder.convFM.weight")
    for k in need:
        if k not in state:
            raise WeightsError(f"{src} is not an STM / STM-cycle checkpoint: key {k} is missing")
    key_dim, c16 = state["KV_Q_r4.Key.weight"].shape[:2]
    encoder = _ENCODER_BY_WIDTH.get(int(c16))
    if encoder is None:
        raise WeightsError(f"{src}: a {c16}-channel res4 is neither ResNet-18 (256) nor ResNet-50 (1024)")
    mdim = int(state["Decoder.convFM.weight"].shape[0])
    return ModelConfig(
        encoder=encoder,
        memory_encoder="stm",
        second_mask=_SECOND_MASK[source],
        key_dim=int(key_dim),
        value_dim=int(state["KV_Q_r4.Value.weight"].shape[0]),
        decoder_dims=(mdim, mdim, mdim),
    )


def _our_name(key: str, source: str) -> str | None:
    if key.startswith(_SECOND_STEM[source]):
        return "memory_backbone.conv1_o." + key[len(_SECOND_STEM[source]) :]
    for prefix, ours in _RENAMES.items():
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    return None


def map_state(
    state: dict[str, torch.Tensor], source: str, net: CycleVOSNet, src: Path | str = "the checkpoint"
) -> dict[str, torch.Tensor]:
    """Source state_dict (``module.`` already stripped) -> our state_dict for ``net``; raises WeightsError
    naming every key it cannot place and every one of ours left unfilled."""
    own = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    for key, value in state.items():
        if key in _NORM_BUFFERS:
            expected = torch.tensor(_NORM_BUFFERS[key], dtype=torch.float32).view(1, 3, 1, 1)
            if value.shape != expected.shape or not torch.allclose(value.float(), expected, atol=1e-6):
                raise WeightsError(f"{src}: {key} is not the ImageNet normalisation our network uses")
            continue
        ours = _our_name(key, source)
        if ours == "decoder.pred.weight" and value.shape[:1] == (2,):
            value = value[1:2] - value[0:1]  # (2, C, 3, 3) -> (1, C, 3, 3): l1 - l0
        elif ours == "decoder.pred.bias" and value.shape == (2,):
            value = value[1:2] - value[0:1]  # (2,) -> (1,)
        if ours is None or ours not in own or own[ours].shape != value.shape or ours in out:
            unplaced.append(key)
            continue
        out[ours] = value.float() if value.is_floating_point() else value
    for k in own:  # counters absent from files saved before PyTorch 0.4.1
        if k.endswith(".num_batches_tracked") and k not in out:
            out[k] = torch.zeros((), dtype=torch.long)
    unfilled = [k for k in own if k not in out]
    if unplaced or unfilled:
        hint = ""
        other = "stm" if source == "stm-cycle" else "stm-cycle"
        if any(k.startswith(_SECOND_STEM[other]) for k in unplaced):
            hint = f" (this looks like an {other.upper()} checkpoint: use --from {other})"
        raise WeightsError(
            f"cannot convert {src} as {source}: source keys with no place {_names(unplaced)}; "
            f"our keys left unfilled {_names(unfilled)}{hint}"
        )
    return out


def _names(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def convert(src_path: str | Path, dst_path: str | Path, source: str, half: bool = False) -> dict:
    """Convert an STM (``source='stm'``, ``STM_weights.pth``) or STM-cycle (``source='stm-cycle'``,
    a ``.pth.tar`` from lyxok1/STM-Training) checkpoint into a cyclevos checkpoint at ``dst_path``.

    Returns the saved ``meta`` plus the detected ``config`` (a dict) for the caller to report.
    """
    if source not in SOURCES:
        raise WeightsError(f"unknown source {source!r}: choose {' or '.join(SOURCES)}")
    src = Path(src_path)
    state, extra = _read_state(src)
    config = _config_from_shapes(state, source, src)
    check_finite(state, src)
    net = CycleVOSNet(config)
    net.load_state_dict(map_state(state, source, net, src), strict=True)
    meta = {"converted_from": source, "source_file": src.name, "source_keys": len(state)}
    meta.update({f"source_{k}": v for k, v in extra.items()})  # STM-cycle: source_epoch, source_max_skip
    try:
        save_checkpoint(dst_path, net, extra=meta, half=half)
    except OSError as e:
        raise WeightsError(f"cannot write {dst_path}: {e.strerror or e}; choose a writable destination") from None
    return {**meta, "config": config.to_dict()}
