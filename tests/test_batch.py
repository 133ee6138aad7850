"""``cyclevos batch``: resume, isolated failures, shards, the manifest's errors, and the Ray path on a real
local cluster (tiny generated videos, the random-weights checkpoint)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import moving_square_clip

from comfyui_cyclevos.batch.jobs import Job, parse_shard, read_manifest, scan_folder, shard
from comfyui_cyclevos.cli import main
from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.media.writers import write_palette_png

FRAMES = 6


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_video(path: Path) -> Path:
    frames, _ = moving_square_clip(n=FRAMES)
    gen = imageio_ffmpeg.write_frames(str(path), (96, 64), fps=10, macro_block_size=1, ffmpeg_log_level="error")
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()
    return path


def write_mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_palette_png(path, moving_square_clip(n=1)[1][0])
    return path


def shots(folder: Path) -> Path:
    """a.mp4 with a.png beside it, b.mp4 with masks/b.png, c.mp4 broken (not a video) with c.png."""
    folder.mkdir()
    write_video(folder / "a.mp4")
    write_mask(folder / "a.png")
    write_video(folder / "b.mp4")
    write_mask(folder / "masks" / "b.png")
    (folder / "c.mp4").write_bytes(b"not a video at all" * 100)
    write_mask(folder / "c.png")
    return folder


def summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["video", "status", "frames", "seconds", "fps", "objects", "error"]
    return {r["video"]: r for r in rows}


def fast(checkpoint: Path) -> list:
    return ["--weights", checkpoint, "--size", 64, "--no-gc"]


# ----------------------------------------------------------------------------- one process


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, random_checkpoint):
    """A batch of shots() (a, b good, c broken): (the folder, OUT, the result). The rerun test goes on
    from it, so the two share one first run."""
    tmp = tmp_path_factory.mktemp("batch")
    folder, out = shots(tmp / "shots"), tmp / "out"
    return folder, out, run("batch", folder, "--out", out, *fast(random_checkpoint))


def test_a_broken_video_is_recorded_and_the_batch_goes_on(first_run) -> None:
    folder, out, r = first_run
    assert r.exit_code == 1, r.output
    assert "error: 1 of 3 video(s) failed" in r.output
    rows = summary(out / "batch.csv")
    assert [rows[v]["status"] for v in ("a.mp4", "b.mp4", "c.mp4")] == ["done", "done", "failed"]
    for v in ("a.mp4", "b.mp4"):
        assert rows[v]["frames"] == str(FRAMES) and rows[v]["objects"] == "1" and not rows[v]["error"]
        assert float(rows[v]["fps"]) > 0
        assert sorted(p.stem for p in (out / v[0]).glob("*.png")) == [f"{i:05d}" for i in range(FRAMES)]
        assert (out / v[0] / "cyclevos.json").is_file()
    assert "c.mp4" in rows["c.mp4"]["error"] and rows["c.mp4"]["frames"] == ""
    assert not (out / "c").exists()


def test_a_rerun_skips_finished_videos_and_does_the_rest(first_run, random_checkpoint) -> None:
    folder, out, r = first_run
    assert r.exit_code == 1, r.output
    before = {p: p.stat().st_mtime_ns for p in (out / "a").iterdir()}
    write_video(folder / "c.mp4")  # the broken video is fixed
    r = run("batch", folder, "--out", out, *fast(random_checkpoint))
    assert r.exit_code == 0, r.output
    rows = summary(out / "batch.csv")
    assert [rows[v]["status"] for v in ("a.mp4", "b.mp4", "c.mp4")] == ["skipped", "skipped", "done"]
    assert rows["a.mp4"]["frames"] == str(FRAMES)  # a skipped row keeps its numbers
    assert {p: p.stat().st_mtime_ns for p in (out / "a").iterdir()} == before  # not written again
    assert (out / "c" / "cyclevos.json").is_file()
    assert "3 video(s): 1 done, 2 skipped (finished before), 0 failed" in r.output


def test_every_video_is_in_exactly_one_shard(tmp_path, random_checkpoint) -> None:
    jobs = [Job(f"v{i}.mp4", Path(f"v{i}.mp4")) for i in range(11)]
    for n in range(1, 6):
        parts = [shard(jobs, k, n) for k in range(1, n + 1)]
        names = [j.name for part in parts for j in part]
        assert sorted(names) == sorted(j.name for j in jobs), n  # all of them, none twice
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for k in (1, 2, 3):  # a video added at the end of the list joins one part; the others do not move
        assert shard(jobs, k, 3)[: len(shard(jobs[:-1], k, 3))] == shard(jobs[:-1], k, 3)
    for bad in ("0/3", "4/3", "2", "a/b", "1/0"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)
    # the command: three shards of a folder of five videos without masks (each fails at once)
    folder, out = tmp_path / "shots", tmp_path / "out"
    folder.mkdir()
    for i in range(5):
        (folder / f"v{i}.mp4").write_bytes(b"x")
    seen = []
    for k in (1, 2, 3):
        r = run("batch", folder, "--out", out, "--shard", f"{k}/3", *fast(random_checkpoint))
        assert r.exit_code == 1, r.output
        rows = summary(out / f"batch-{k}-of-3.csv")
        assert all("no mask for" in row["error"] for row in rows.values())
        seen += list(rows)
    assert sorted(seen) == [f"v{i}.mp4" for i in range(5)]
    r = run("batch", folder, "--out", out, "--shard", "4/3")
    assert r.exit_code == 2 and r.output.startswith("error: --shard")


# ----------------------------------------------------------------------------- the manifest


def test_manifest_rows_add_keyframes_and_name_outputs(tmp_path) -> None:
    write_video(tmp_path / "a.mp4")
    write_video(tmp_path / "b.mp4")
    for name in ("a0", "a3", "b"):
        write_mask(tmp_path / "m" / f"{name}.png")
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "video,mask,frame,out\n# a comment\na.mp4,m/a0.png,,first\n\nb.mp4,m/b.png,2,\na.mp4,m/a3.png,3,\n"
    )
    jobs = read_manifest(manifest, tmp_path / "out", mask_frame=1)
    assert [j.name for j in jobs] == ["a.mp4", "b.mp4"]
    assert jobs[0].keyframes == {1: (tmp_path / "m" / "a0.png").resolve(), 3: (tmp_path / "m" / "a3.png").resolve()}
    assert jobs[0].out == (tmp_path / "out" / "first").absolute()
    assert list(jobs[1].keyframes) == [2] and jobs[1].out.name == "b"


@pytest.mark.parametrize(
    "text, message",
    [
        ("video,mask\na.mp4,m.png\nnope.mp4,m.png\n", "list.csv row 3: video nope.mp4 not found"),
        ("video,mask\na.mp4,gone.png\n", "list.csv row 2: mask gone.png not found"),
        ("video,mask,colour\na.mp4,m.png,red\n", "list.csv row 1: unknown column 'colour'"),
        ("video,frame\na.mp4,0\n", "list.csv row 1: the header has no 'mask' column"),
        ("a.mp4,m.png\n", "list.csv row 1: unknown column 'a.mp4'"),
        ("video,mask\na.mp4,m.png\na.mp4\n", "list.csv row 3: 1 cells where the header has 2"),
        ("video,mask,frame\na.mp4,m.png,first\n", "list.csv row 2: frame 'first' is not a frame index"),
        ("video,mask,frame\na.mp4,m.png,0\na.mp4,m.png,0\n", "list.csv row 3: a second mask for frame 0"),
        ("video,mask,out\na.mp4,m.png,x\nb.mp4,m.png,x\n", "list.csv row 3: rows 2 and 3 both write to"),
        ("video,mask\n", "list.csv has a header but no rows"),
    ],
)
def test_manifest_errors_are_one_line_naming_the_row(tmp_path, text, message) -> None:
    write_video(tmp_path / "a.mp4")
    write_video(tmp_path / "b.mp4")
    write_mask(tmp_path / "m.png")
    (tmp_path / "list.csv").write_text(text)
    r = run("batch", tmp_path / "list.csv", "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {message}"), r.output
    assert r.output.count("\n") == 1, r.output  # one line, no traceback


def test_a_missing_manifest_or_folder_is_one_line(tmp_path) -> None:
    r = run("batch", tmp_path / "gone.csv", "--out", tmp_path / "out")
    assert r.exit_code == 2 and r.output.startswith("error: manifest") and r.output.count("\n") == 1, r.output
    (tmp_path / "empty").mkdir()
    r = run("batch", tmp_path / "empty", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "holds no video files" in r.output and r.output.count("\n") == 1, r.output
    with pytest.raises(InputError, match="share the name"):
        (tmp_path / "empty" / "x.mp4").write_bytes(b"")
        (tmp_path / "empty" / "x.mov").write_bytes(b"")
        scan_folder(tmp_path / "empty", tmp_path / "out")


# ----------------------------------------------------------------------------- Ray


def test_ray_batch_on_a_local_cluster(tmp_path, random_checkpoint) -> None:
    """Three videos (one broken) as Ray tasks on a local 2-CPU cluster: two done, one failed, the summary
    right; a rerun skips the two. The workers load the network once each and keep it."""
    import ray  # the test extra installs it: this test is never skipped

    shots(tmp_path / "shots")
    (tmp_path / "list.csv").write_text(
        "video,mask,out\nshots/a.mp4,shots/a.png,\nshots/b.mp4,shots/masks/b.png,\nshots/c.mp4,shots/c.png,\n"
    )
    out = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = run("batch", tmp_path / "list.csv", "--ray", "--out", out, *fast(random_checkpoint))
        assert r.exit_code == 1, r.output
        assert "error: 1 of 3 video(s) failed" in r.output
        # each worker loads the network on its first video and keeps it: 3 videos, at most 2 at a time
        workers, loads = map(int, re.search(r"on (\d+) worker\(s\); the network was loaded (\d+)", r.output).groups())
        assert workers <= 2 and loads == workers, r.output
        rows = summary(out / "batch.csv")
        names = ("shots/a.mp4", "shots/b.mp4", "shots/c.mp4")
        assert [rows[v]["status"] for v in names] == ["done", "done", "failed"]
        assert all(rows[v]["frames"] == str(FRAMES) and rows[v]["objects"] == "1" for v in names[:2])
        assert "c.mp4" in rows["shots/c.mp4"]["error"]
        for d in ("a", "b"):  # written by the workers
            assert len(list((out / d).glob("*.png"))) == FRAMES and (out / d / "cyclevos.json").is_file()

        r = run("batch", tmp_path / "list.csv", "--ray", "--out", out, *fast(random_checkpoint))
        assert r.exit_code == 1, r.output
        rows = summary(out / "batch.csv")
        assert [rows[v]["status"] for v in names] == ["skipped", "skipped", "failed"]
        assert "ray: 1 video(s) on 1 worker(s)" in r.output

    finally:
        ray.shutdown()
