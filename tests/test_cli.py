import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from comfyui_cyclevos.cli import main
from comfyui_cyclevos.media.writers import write_palette_png


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_segment_writes_one_palette_png_per_frame(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    out = tmp_path / "out"
    r = run(
        "segment",
        frames,
        "--mask",
        mask,
        "--out",
        out,
        "--weights",
        random_checkpoint,
        "--size",
        64,
        "--gc-every",
        3,
        "--gc-steps",
        2,
        "--overlay",
        tmp_path / "ov.mp4",
        "--mask-video",
        tmp_path / "mv.mp4",
    )
    assert r.exit_code == 0, r.output
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == [f"f{i:03d}" for i in range(8)]
    for p in pngs:
        im = Image.open(p)
        assert im.mode == "P" and im.size == (96, 64)
        assert set(np.unique(np.asarray(im))) <= {0, 1, 2}
    assert np.array_equal(np.asarray(Image.open(pngs[0])), np.asarray(Image.open(mask)))
    summary = json.loads((out / "cyclevos.json").read_text())
    assert summary["frames"] == 8 and summary["objects"] == [1, 2]
    assert (tmp_path / "ov.mp4").stat().st_size > 0 and (tmp_path / "mv.mp4").stat().st_size > 0
    assert not (tmp_path / "out.partial").exists()


def test_segment_reads_a_video_and_names_frames_by_index(tmp_path, random_checkpoint):
    import imageio_ffmpeg
    from conftest import moving_square_clip

    frames, labels = moving_square_clip(n=6)
    video = tmp_path / "clip.mp4"
    gen = imageio_ffmpeg.write_frames(str(video), (96, 64), fps=10, macro_block_size=1, ffmpeg_log_level="error")
    gen.send(None)
    for f in frames:
        gen.send(np.ascontiguousarray(f))
    gen.close()
    write_palette_png(tmp_path / "m.png", labels[0])
    r = run(
        "segment",
        video,
        "--mask",
        tmp_path / "m.png",
        "--out",
        tmp_path / "o",
        "--weights",
        random_checkpoint,
        "--no-gc",
        "--size",
        64,
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.stem for p in (tmp_path / "o").glob("*.png")) == [f"{i:05d}" for i in range(6)]


def _one_line_error(r):
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_mask_of_the_wrong_size(clip_folder, random_checkpoint, tmp_path):
    frames, _ = clip_folder
    write_palette_png(tmp_path / "small.png", np.ones((10, 10), np.uint8))
    line = _one_line_error(
        run(
            "segment", frames, "--mask", tmp_path / "small.png", "--out", tmp_path / "o", "--weights", random_checkpoint
        )
    )
    assert "10x10" in line and "96x64" in line
    assert not (tmp_path / "o").exists()


def test_empty_mask(clip_folder, random_checkpoint, tmp_path):
    frames, _ = clip_folder
    write_palette_png(tmp_path / "empty.png", np.zeros((64, 96), np.uint8))
    line = _one_line_error(
        run(
            "segment", frames, "--mask", tmp_path / "empty.png", "--out", tmp_path / "o", "--weights", random_checkpoint
        )
    )
    assert "draw at least one object" in line


def test_missing_weights(clip_folder, tmp_path):
    frames, mask = clip_folder
    line = _one_line_error(
        run("segment", frames, "--mask", mask, "--out", tmp_path / "o", "--weights", tmp_path / "nope.pt")
    )
    assert "nope.pt" in line and "not found" in line


def test_weights_that_are_not_a_checkpoint(clip_folder, tmp_path):
    frames, mask = clip_folder
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    line = _one_line_error(run("segment", frames, "--mask", mask, "--out", tmp_path / "o", "--weights", bad))
    assert "bad.pt" in line


def test_unreadable_video(tmp_path, random_checkpoint):
    (tmp_path / "x.mp4").write_text("this is not a video")
    write_palette_png(tmp_path / "m.png", np.ones((4, 4), np.uint8))
    line = _one_line_error(
        run(
            "segment",
            tmp_path / "x.mp4",
            "--mask",
            tmp_path / "m.png",
            "--out",
            tmp_path / "o",
            "--weights",
            random_checkpoint,
        )
    )
    assert "x.mp4" in line


def test_interrupted_run_leaves_no_complete_looking_output(clip_folder, random_checkpoint, tmp_path, monkeypatch):
    from comfyui_cyclevos.inference import engine as propagate

    frames, mask = clip_folder
    calls = {"n": 0}
    real_step = propagate.InferenceCore.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(propagate.InferenceCore, "step", step)
    r = run(
        "segment",
        frames,
        "--mask",
        mask,
        "--out",
        tmp_path / "o",
        "--weights",
        random_checkpoint,
        "--size",
        64,
        "--adapt",
        0,
    )
    assert r.exit_code == 130
    assert not (tmp_path / "o").exists()
    (partial,) = tmp_path.glob(".o.*.partial")
    assert len(list(partial.glob("*.png"))) == 3
    assert not (partial / "cyclevos.json").exists()


def test_refuses_to_overwrite_a_foreign_folder(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep me")
    line = _one_line_error(
        run("segment", frames, "--mask", mask, "--out", tmp_path / "o", "--weights", random_checkpoint, "--size", 64)
    )
    assert "not a cyclevos output folder" in line
    assert (tmp_path / "o" / "precious.txt").exists()


def test_help_explains_every_option():
    r = run("segment", "--help")
    assert r.exit_code == 0
    for opt in (
        "--mask",
        "--out",
        "--weights",
        "--device",
        "--size",
        "--overlay",
        "--gc",
        "--gc-every",
        "--gc-steps",
        "--gc-rate",
    ):
        assert opt in r.output


def test_mask_on_a_later_frame_segments_both_ways(tmp_path, random_checkpoint):
    from conftest import moving_square_clip
    from PIL import Image

    frames, labels = moving_square_clip(n=6)
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(d / f"{i:05d}.png")
    write_palette_png(tmp_path / "m3.png", labels[3])
    r = run(
        "segment",
        d,
        "--mask",
        tmp_path / "m3.png",
        "--mask-frame",
        3,
        "--out",
        tmp_path / "o",
        "--weights",
        random_checkpoint,
        "--size",
        64,
        "--no-gc",
    )
    assert r.exit_code == 0, r.output
    pngs = sorted((tmp_path / "o").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(6)]
    assert np.array_equal(np.asarray(Image.open(pngs[3])), labels[3])
    line = _one_line_error(
        run(
            "segment",
            d,
            "--mask",
            tmp_path / "m3.png",
            "--mask-frame",
            9,
            "--out",
            tmp_path / "o2",
            "--weights",
            random_checkpoint,
            "--size",
            64,
        )
    )
    assert "frame 9" in line and not (tmp_path / "o2").exists()


def test_an_unwritable_out_is_a_one_line_error(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    (tmp_path / "file").write_text("not a folder")
    line = _one_line_error(
        run(
            "segment",
            frames,
            "--mask",
            mask,
            "--out",
            tmp_path / "file" / "o",
            "--weights",
            random_checkpoint,
            "--size",
            64,
        )
    )
    assert "file" in line and "--out" in line


def test_edge_options_change_the_written_masks(clip_folder, random_checkpoint, tmp_path):
    frames, mask = clip_folder
    args = ("segment", frames, "--mask", mask, "--weights", random_checkpoint, "--size", 64, "--no-gc")
    assert run(*args, "--out", tmp_path / "plain").exit_code == 0
    r = run(*args, "--out", tmp_path / "grown", "--grow", 3, "--fill-holes", "--min-area", 5)
    assert r.exit_code == 0, r.output
    first = sorted((tmp_path / "plain").glob("*.png"))[0].name
    plain = np.asarray(Image.open(tmp_path / "plain" / first))
    grown = np.asarray(Image.open(tmp_path / "grown" / first))
    assert (grown > 0).sum() > (plain > 0).sum() and (grown[plain > 0] == plain[plain > 0]).all()
    assert json.loads((tmp_path / "grown" / "cyclevos.json").read_text())["edges"]["grow"] == 3
