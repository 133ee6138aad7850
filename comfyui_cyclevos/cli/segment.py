"""``segment``, ``batch`` and ``demo``: videos into folders of masks."""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path

import click

from ..demo import demo_clip
from .app import main
from .options import (
    _edge_options,
    _engine_setup,
    _friendly,
    _inference_options,
    _Phases,
    parse_keyframes,
    parse_removals,
)


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
    from ..media.edges import EdgeConfig
    from ..media.frames import open_frames
    from ..media.masks import read_mask
    from ..runner import check_keyframes, check_outputs, check_removals, segment_video

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
    from ..batch.jobs import parse_shard, read_manifest, scan_folder
    from ..batch.jobs import shard as take_shard
    from ..batch.local import JobOptions, Summary, run_batch
    from ..errors import InputError
    from ..media.edges import EdgeConfig

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
            from ..batch.ray_cluster import run_batch_ray

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
    from ..media.frames import open_frames
    from ..media.masks import read_mask
    from ..runner import segment_video

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
