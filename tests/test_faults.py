"""Fault injection on the CLI: a full disk, ffmpeg failing as it closes the file, SIGKILL and SIGTERM mid-run, two
runs on one --out. Whatever happens, no run exits 0 with an incomplete or corrupt output, and no file that
cyclevos did not write is removed or changed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from comfyui_cyclevos.cli import main
from comfyui_cyclevos.media.writers import write_palette_png

REPO = Path(__file__).resolve().parents[1]
FRAMES = 12


@pytest.fixture
def clip(tmp_path):
    """FRAMES frames of 64x96 with a user's file beside them, the first-frame mask, and an earlier good output."""
    from conftest import moving_square_clip

    frames, labels = moving_square_clip(n=FRAMES)
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"{i:03d}.png")
    (d / "notes.txt").write_text("the user's")
    mask = tmp_path / "mask.png"
    write_palette_png(mask, labels[0])
    return d, mask


def user_files(root: Path) -> dict[Path, bytes]:
    """Every file outside the outputs cyclevos writes in these tests."""
    return {
        p: p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
        and not {"out", "ov.mp4", "mv.mp4"} & {p.parts[len(root.parts)], p.name}
        and ".partial" not in str(p)
    }


def assert_complete(out: Path, frames: int) -> None:
    summary = json.loads((out / "cyclevos.json").read_text())
    pngs = sorted(out.glob("*.png"))
    assert summary["frames"] == frames == len(pngs) and sorted(summary["files"]) == [p.name for p in pngs]
    for p in pngs:
        with Image.open(p) as im:
            im.load()
            assert im.mode == "P" and im.size == (96, 64)
    assert sorted(x.name for x in out.iterdir()) == sorted([*(p.name for p in pngs), "cyclevos.json"])


def cli(frames, mask, out, ckpt, *extra):
    return [str(a) for a in ("segment", frames, "--mask", mask, "--out", out, "--weights", ckpt, "--size", 64, *extra)]


def spawn(args, **env):
    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "comfyui_cyclevos.cli", *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_pngs(root: Path, n: int, proc, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(len(list(p.glob("*.png"))) >= n for p in [*root.glob(".out.*.partial"), root / "out.partial"]):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail("the run wrote no frames in time")


def test_disk_full_mid_run_keeps_the_earlier_output_and_exits_2(clip, random_checkpoint, tmp_path, monkeypatch):
    frames, mask = clip
    out = tmp_path / "out"
    r = CliRunner().invoke(main, cli(frames, mask, out, random_checkpoint, "--no-gc"))
    assert r.exit_code == 0, r.output
    before, earlier = user_files(tmp_path), {p.name: p.read_bytes() for p in out.iterdir()}
    real, calls = Image.Image.save, {"n": 0}

    def save(self, fp, *a, **k):  # the disk fills at the 10th frame of the second run
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save)
    r = CliRunner().invoke(main, cli(frames, mask, out, random_checkpoint, "--no-gc", "--overlay", tmp_path / "ov.mp4"))
    lines = [
        ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith(("segmenting", "adapting"))
    ]  # progress labels
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    assert "No space left" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # the earlier result, untouched
    assert not (tmp_path / "ov.mp4").exists()
    assert user_files(tmp_path) == before


def test_ffmpeg_failing_at_close_gives_exit_2_and_no_output(clip, random_checkpoint, tmp_path):
    frames, mask = clip
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\ncat > /dev/null\necho "Error writing trailer: No space left on device" >&2\nexit 1\n')
    fake.chmod(0o755)
    before = user_files(tmp_path)
    p = spawn(
        cli(frames, mask, tmp_path / "out", random_checkpoint, "--no-gc", "--mask-video", tmp_path / "mv.mp4"),
        IMAGEIO_FFMPEG_EXE=str(fake),
    )
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert b"Error writing trailer" in err and err.strip().splitlines()[-1].startswith(b"error: ")
    assert b"Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "mv.mp4").exists()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".mv.mp4")]
    assert user_files(tmp_path) == before


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_leaves_no_complete_looking_output(clip, random_checkpoint, tmp_path, sig):
    frames, mask = clip
    out = tmp_path / "out"
    before = user_files(tmp_path)
    p = spawn(
        cli(frames, mask, out, random_checkpoint, "--gc-every", 1, "--gc-steps", 8, "--overlay", tmp_path / "ov.mp4")
    )
    wait_for_pngs(tmp_path, 3, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), err
    assert not out.exists() and not (tmp_path / "ov.mp4").exists()
    assert user_files(tmp_path) == before
    if sig == signal.SIGKILL:  # its leftovers go with the next run on the same names
        assert list(tmp_path.glob(".out.*.partial"))
        r = CliRunner().invoke(
            main, cli(frames, mask, out, random_checkpoint, "--no-gc", "--overlay", tmp_path / "ov.mp4")
        )
        assert r.exit_code == 0, r.output
        assert_complete(out, FRAMES)
        assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]
    else:
        assert b"interrupted" in err


def test_two_runs_on_one_out_never_publish_a_mixed_folder(clip, random_checkpoint, tmp_path):
    frames, mask = clip
    out = tmp_path / "out"
    before = user_files(tmp_path)
    runs = [spawn(cli(frames, mask, out, random_checkpoint, "--no-gc", "--grow", g)) for g in (0, 1)]
    results = [(p.communicate(timeout=120)[1], p.returncode)[::-1] for p in runs]
    codes = [c for c, _ in results]
    assert sorted(codes) in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert b"another run" in err
    assert_complete(out, FRAMES)
    assert user_files(tmp_path) == before
    summary = json.loads((out / "cyclevos.json").read_text())
    assert summary["edges"]["grow"] in (0, 1)
    ref = {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}
    assert len(ref) == FRAMES
