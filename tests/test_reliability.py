"""Issue 28: outputs that never lie, inputs that are never silently wrong (one test or more per item)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from comfyui_cyclevos.cli import main
from comfyui_cyclevos.errors import InputError, WeightsError
from comfyui_cyclevos.media.writers import write_palette_png


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [
        ln for ln in r.output.splitlines() if ln.strip() and not ln.startswith(("segmenting", "adapting"))
    ]  # progress labels
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def seg(frames, mask, out, ckpt, *extra):
    return run("segment", frames, "--mask", mask, "--out", out, "--weights", ckpt, "--size", 64, "--no-gc", *extra)


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- 1. two runs on one --out --------------------------------------------------------------------


def test_each_run_has_its_own_partial_folder_and_never_publishes_over_another(tmp_path):
    from comfyui_cyclevos.media.output_dir import OutputFolder

    out = tmp_path / "o"
    a, b = OutputFolder(out), OutputFolder(out)
    pa, pb = a.begin(), b.begin()
    assert pa != pb and pa.parent == pb.parent == tmp_path
    for p, n in ((pa, 3), (pb, 5)):
        for i in range(n):
            (p / f"{i}.png").write_bytes(b"x")
        (p / "cyclevos.json").write_text(json.dumps({"frames": n}))
    a.publish()
    with pytest.raises(InputError, match="another run"):
        b.publish()
    assert sorted(x.name for x in out.iterdir()) == ["0.png", "1.png", "2.png", "cyclevos.json"]
    assert len(list(pb.iterdir())) == 6  # b's result is kept where the message says


# ---- 2. failed video writes, disk full --------------------------------------------------------------


def test_ffmpeg_failing_at_close_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    import imageio_ffmpeg

    from comfyui_cyclevos.media.writers import MaskVideoWriter

    fake = tmp_path / "ffmpeg"
    fake.write_text('#!/bin/sh\ncat > /dev/null\necho "Error writing trailer: No space left on device" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    w = MaskVideoWriter(tmp_path / "m.mp4", 10, (64, 96))
    for _ in range(3):
        w.write(np.zeros((64, 96), np.uint8))
    with pytest.raises(InputError, match="No space left"):
        w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ffmpeg"]


def test_disk_full_while_writing_pngs_is_a_one_line_error(clip_folder, random_checkpoint, tmp_path, monkeypatch):
    import errno

    from PIL import Image as PILImage

    frames, mask = clip_folder
    real, calls = PILImage.Image.save, {"n": 0}

    def save(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, *a, **k)

    monkeypatch.setattr(PILImage.Image, "save", save)
    line = one_line_error(seg(frames, mask, tmp_path / "o", random_checkpoint))
    assert "No space left on device" in line
    assert not (tmp_path / "o").exists()


# ---- 3. replacing an output folder ----------------------------------------------------------------


def test_replacing_keeps_a_folder_holding_files_cyclevos_did_not_write(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    out = tmp_path / "o"
    assert seg(frames, mask, out, random_checkpoint).exit_code == 0
    first = json.loads((out / "cyclevos.json").read_text())
    assert seg(frames, mask, out, random_checkpoint, "--grow", 1).exit_code == 0  # ours alone: replaced
    assert json.loads((out / "cyclevos.json").read_text())["edges"] != first["edges"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (out / "notes.txt").write_text("mine")
    line = one_line_error(seg(frames, mask, out, random_checkpoint))
    assert "not a cyclevos output folder" in line
    assert (out / "notes.txt").read_text() == "mine"


def test_an_output_folder_holding_the_input_mask_is_refused(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    out = tmp_path / "o"
    assert seg(frames, mask, out, random_checkpoint).exit_code == 0
    inner = out / "f000.png"  # the user takes the first output mask as the input mask
    before = inner.read_bytes()
    line = one_line_error(seg(frames, inner, out, random_checkpoint))
    assert "input" in line
    assert inner.read_bytes() == before


def test_an_output_folder_inside_the_input_frames_folder_is_refused(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    before = snapshot(frames)
    line = one_line_error(seg(frames, mask, frames / "out", random_checkpoint))
    assert "input" in line
    assert snapshot(frames) == before


# ---- 4. inputs overwritten --------------------------------------------------------------------------


def test_the_report_plot_never_replaces_the_input_mask(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder  # mask is tmp_path/mask.png
    before = mask.read_bytes()
    line = one_line_error(seg(frames, mask, tmp_path / "o", random_checkpoint, "--report", tmp_path / "mask.csv"))
    assert "mask.png" in line
    assert mask.read_bytes() == before


def test_the_overlay_never_replaces_the_input_video(tmp_path, random_checkpoint):
    from conftest import moving_square_clip

    from comfyui_cyclevos.media.writers import OverlayVideoWriter

    frames, labels = moving_square_clip(n=4)
    video = tmp_path / "clip.mp4"
    with OverlayVideoWriter(video, 10, (64, 96)) as w:
        for f in frames:
            w.write(f)
    write_palette_png(tmp_path / "m.png", labels[0])
    before = video.read_bytes()
    line = one_line_error(seg(video, tmp_path / "m.png", tmp_path / "o", random_checkpoint, "--overlay", video))
    assert "input" in line
    assert video.read_bytes() == before


def test_an_existing_file_cyclevos_did_not_write_is_never_replaced(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    holiday = tmp_path / "holiday.mp4"
    holiday.write_bytes(b"not ours")
    line = one_line_error(seg(frames, mask, tmp_path / "o", random_checkpoint, "--mask-video", holiday))
    assert "not written by cyclevos" in line
    assert holiday.read_bytes() == b"not ours"
    ours = tmp_path / "ours.mp4"
    assert seg(frames, mask, tmp_path / "o", random_checkpoint, "--mask-video", ours).exit_code == 0
    assert seg(frames, mask, tmp_path / "o", random_checkpoint, "--mask-video", ours).exit_code == 0  # ours: replaced


# ---- 5. 16-bit frames ------------------------------------------------------------------------------


def test_16_bit_frames_are_scaled_not_clipped(tmp_path):
    from comfyui_cyclevos.media.frames import open_frames

    d = tmp_path / "f"
    d.mkdir()
    a = np.tile(np.linspace(0, 65535, 96).astype(np.uint16), (64, 1))
    Image.fromarray(a).save(d / "0.png")
    assert Image.open(d / "0.png").mode.startswith("I")
    ((_, frame),) = list(open_frames(d))
    assert frame.dtype == np.uint8 and frame[0, 0, 0] == 0 and frame[0, -1, 0] == 255
    assert abs(int(frame[0, 48, 0]) - 128) <= 2  # mid-grey stays mid-grey (it was 255: white)


# ---- 6. 16-bit id masks -----------------------------------------------------------------------------


def test_16_bit_id_masks_keep_their_ids_or_are_refused(tmp_path):
    from comfyui_cyclevos.media.masks import read_mask

    a = np.zeros((64, 96), np.uint16)
    a[:10, :10], a[20:30, 20:30] = 1, 200
    Image.fromarray(a).save(tmp_path / "small.png")
    assert sorted(np.unique(read_mask(tmp_path / "small.png"))) == [0, 1, 200]
    a[40:50, 40:50] = 300
    Image.fromarray(a).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="1..255"):
        read_mask(tmp_path / "big.png")
    b = np.zeros((64, 96), np.uint16)
    b[:10, :10], b[20:30, 20:30] = 1000, 2000
    Image.fromarray(b).save(tmp_path / "k.png")
    with pytest.raises(InputError, match="1..255"):
        read_mask(tmp_path / "k.png")
    c = np.zeros((64, 96), np.uint16)
    c[:10, :10] = 65535
    Image.fromarray(c).save(tmp_path / "bin.png")
    assert sorted(np.unique(read_mask(tmp_path / "bin.png"))) == [0, 1]


# ---- 7. truncated videos ----------------------------------------------------------------------------


def test_a_truncated_faststart_video_is_an_error(tmp_path):
    import imageio_ffmpeg

    from comfyui_cyclevos.media.frames import open_frames

    rng = np.random.default_rng(0)
    frames = (rng.random((40, 64, 96, 3)) * 255).astype(np.uint8)
    path = tmp_path / "fs.mp4"
    gen = imageio_ffmpeg.write_frames(
        str(path),
        (96, 64),
        fps=10,
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )
    gen.send(None)
    for f in frames:
        gen.send(f)
    gen.close()
    assert len(open_frames(path)) == 40
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        len(open_frames(cut))


# ---- 8. frames and masks at the engine's door -----------------------------------------------------


@pytest.fixture(scope="module")
def net(random_checkpoint):
    from comfyui_cyclevos.model.checkpoint import load_checkpoint

    return load_checkpoint(random_checkpoint)


def _engine(net):
    from comfyui_cyclevos.config import CorrectionConfig, InferenceConfig
    from comfyui_cyclevos.inference.engine import InferenceCore

    return InferenceCore(net, InferenceConfig(size=64, correction=CorrectionConfig(enabled=False)))


def test_the_engine_refuses_bad_frames_and_stays_usable(net):
    from conftest import moving_square_clip

    frames, labels = moving_square_clip(n=3)
    e = _engine(net)
    e.step(frames[0], labels[0])
    bad = frames[1].astype(np.float32) / 255
    bad[10:20, 10:20] = np.nan
    for frame in (bad, np.where(np.isnan(bad), np.inf, bad), frames[1].astype(np.float32), frames[1].astype(np.uint16)):
        with pytest.raises(InputError):
            e.step(frame)
    assert e.frame_index == 0
    ids = e.labels(e.step(frames[1]))
    assert (ids == 1).sum() > 0  # the object is still followed


def test_a_soft_float_mask_is_refused(net):
    from conftest import moving_square_clip

    frames, labels = moving_square_clip(n=1)
    soft = labels[0].astype(np.float32) * 0.5
    e = _engine(net)
    with pytest.raises(InputError, match="non-integer"):
        e.step(frames[0], soft)
    assert e.object_ids == []


# ---- 9. numeric options ----------------------------------------------------------------------------


@pytest.mark.parametrize("option", [("--gc-rate", "nan"), ("--gc-rate", "inf"), ("--gc-rate", "-1000"), ("--size", 1)])
def test_bad_numbers_are_one_line_errors(clip_folder, random_checkpoint, tmp_path, option):
    frames, mask = clip_folder
    r = run("segment", frames, "--mask", mask, "--out", tmp_path / "o", "--weights", random_checkpoint, *option)
    one_line_error(r)
    assert not (tmp_path / "o").exists()


def test_zero_steps_and_zero_memory_are_refused():
    from comfyui_cyclevos.config import CorrectionConfig, MemoryConfig

    with pytest.raises(InputError):
        CorrectionConfig(steps=0)
    with pytest.raises(InputError):
        MemoryConfig(every=0)


def _resave(src, dst, change):
    payload = torch.load(src, map_location="cpu", weights_only=True)
    change(payload)
    torch.save(payload, dst)
    return dst


def test_a_checkpoint_with_a_nan_gc_rate_is_refused(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    bad = _resave(random_checkpoint, tmp_path / "nan.pt", lambda p: p["meta"].update(gc_rate=float("nan")))
    line = one_line_error(seg(frames, mask, tmp_path / "o", bad))
    assert "gc_rate" in line


# ---- 10. NaN weights --------------------------------------------------------------------------------


def test_nan_weights_are_refused_at_load(random_checkpoint, tmp_path):
    from comfyui_cyclevos.model.checkpoint import load_checkpoint

    def poison(p):
        k = next(k for k, v in p["state_dict"].items() if v.is_floating_point() and v.ndim > 1)
        p["state_dict"][k] = torch.full_like(p["state_dict"][k], float("nan"))

    with pytest.raises(WeightsError, match="NaN"):
        load_checkpoint(_resave(random_checkpoint, tmp_path / "nan.pt", poison))


def test_convert_refuses_nan_tensors(tmp_path):
    from conftest import random_state, shapes, write_source

    from comfyui_cyclevos.model.convert import convert

    state = random_state(shapes("stm_cycle_resnet18"))
    state["KV_M_r4.Key.weight"][:] = float("nan")
    src = write_source(state, tmp_path / "src.pth.tar", "stm-cycle")
    with pytest.raises(WeightsError, match="NaN"):
        convert(src, tmp_path / "out.pt", "stm-cycle")
    assert not (tmp_path / "out.pt").exists()


# ---- 11. --remove ids checked before the run -------------------------------------------------------


def test_removing_an_object_no_mask_gave_is_refused_before_the_run(
    clip_folder, random_checkpoint, tmp_path, monkeypatch
):
    from comfyui_cyclevos.inference import engine

    frames, mask = clip_folder
    steps = {"n": 0}
    real = engine.InferenceCore.step

    def counting(self, *a, **k):
        steps["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(engine.InferenceCore, "step", counting)
    one = np.zeros((64, 96), np.uint8)
    one[:8, :8] = 5
    write_palette_png(tmp_path / "five.png", one)
    r = seg(frames, mask, tmp_path / "o", random_checkpoint, "--mask", f"5:{tmp_path / 'five.png'}", "--remove", "2:7")
    assert "7" in one_line_error(r)
    r = seg(frames, tmp_path / "five.png", tmp_path / "o", random_checkpoint, "--mask-frame", 5, "--remove", "2:5")
    assert "5" in one_line_error(r)  # object 5 is drawn on frame 5 only: not followed on frame 2
    assert steps["n"] == 0 and not (tmp_path / "o").exists()


# ---- 12. tracebacks -> one-line errors --------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p["state_dict"].update({k: torch.zeros(3) for k in list(p["state_dict"])[:1]}),
        lambda p: p["state_dict"].pop(next(iter(p["state_dict"]))),
        lambda p: p["config"].update(encoder="vgg"),
        lambda p: p.pop("state_dict"),
        lambda p: p.update(meta="oops"),
        lambda p: p["config"].update(key_dim=10**7),
    ],
    ids=["shape", "missing-key", "encoder", "no-state-dict", "string-meta", "huge-key-dim"],
)
def test_damaged_checkpoints_are_one_line_errors(clip_folder, random_checkpoint, tmp_path, change):
    frames, mask = clip_folder
    bad = _resave(random_checkpoint, tmp_path / "bad.pt", change)
    one_line_error(seg(frames, mask, tmp_path / "o", bad))


def test_convert_of_an_empty_file_is_a_one_line_error(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    one_line_error(run("convert", tmp_path / "empty.pth", tmp_path / "o.pt", "--from", "stm"))


def test_eval_of_a_prediction_that_is_not_an_image(tmp_path):
    for root in ("gt/s", "pred/s"):
        (tmp_path / root).mkdir(parents=True)
    for i in range(3):
        write_palette_png(tmp_path / "gt" / "s" / f"{i:05d}.png", np.eye(8, dtype=np.uint8))
        (tmp_path / "pred" / "s" / f"{i:05d}.png").write_bytes(b"not a png")
    one_line_error(run("eval", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt"))


def test_unwritable_output_places_are_found_before_the_run(clip_folder, random_checkpoint, tmp_path, monkeypatch):
    from comfyui_cyclevos.inference import engine

    frames, mask = clip_folder
    if os.geteuid() == 0:  # root writes into read-only folders: a folder under a file is unwritable for anyone
        ro = tmp_path / "a-file"
        ro.write_text("x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    monkeypatch.setattr(engine.InferenceCore, "step", lambda *a, **k: pytest.fail("the run started"))
    try:
        for option in ("--overlay", "--mask-video"):
            one_line_error(seg(frames, mask, tmp_path / "o", random_checkpoint, option, ro / "x.mp4"))
        one_line_error(seg(frames, mask, tmp_path / "o", random_checkpoint, "--report", ro / "r.csv"))
        one_line_error(run("eval", "--pred", tmp_path, "--gt", tmp_path, "--csv", ro / "t.csv"))
        erf = ("erf", frames, "--mask", mask, "--target-frame", 1, "--ref-frame", 0, "--weights", random_checkpoint)
        one_line_error(run(*erf, "--out", ro / "e.png"))
    finally:
        ro.chmod(0o755)


def test_out_dot_is_refused(clip_folder, random_checkpoint, tmp_path, monkeypatch):
    frames, mask = clip_folder
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    one_line_error(seg(frames, mask, ".", random_checkpoint))


# ---- 13. click's usage errors ------------------------------------------------------------------------


def test_usage_errors_are_one_line(clip_folder, tmp_path):
    frames, mask = clip_folder
    one_line_error(run("segment", frames))  # --mask and --out missing
    one_line_error(run("segment", frames, "--mask", mask, "--out", tmp_path / "o", "--size", "big"))
    one_line_error(run("nosuchcommand"))


def test_a_negative_mask_frame_says_so(clip_folder, tmp_path):
    frames, mask = clip_folder
    line = one_line_error(run("segment", frames, "--mask", mask, "--mask", f"-1:{mask}", "--out", tmp_path / "o"))
    assert "-1" in line and "two masks" not in line


# ---- 14. low ---------------------------------------------------------------------------------------


def test_stale_partials_of_dead_runs_are_cleaned_and_live_ones_kept(tmp_path):
    import subprocess

    from comfyui_cyclevos.media.output_dir import clean_stale_partials

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".o.mp4.{dead.pid}-deadbeef.partial.mp4"
    live = tmp_path / f".o.mp4.{os.getpid()}-cafebabe.partial.mp4"
    other = tmp_path / f".other.mp4.{dead.pid}-deadbeef.partial.mp4"
    mine = tmp_path / ".o.mp4.notes"
    for p in (stale, live, other, mine):
        p.write_bytes(b"x")
    clean_stale_partials(tmp_path / "o.mp4")
    assert not stale.exists() and live.exists() and other.exists() and mine.exists()
