"""Video/mask I/O: every mask format, the user-facing errors, lazy reading and the atomic writers."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from comfyui_cyclevos.errors import InputError
from comfyui_cyclevos.inference.objects import check_mask
from comfyui_cyclevos.media.frames import open_frames
from comfyui_cyclevos.media.masks import mask_from_array, read_mask
from comfyui_cyclevos.media.overlay import overlay
from comfyui_cyclevos.media.palette import DAVIS_PALETTE
from comfyui_cyclevos.media.writers import MaskVideoWriter, OverlayVideoWriter, write_palette_png

H, W = 48, 64


def _ids() -> np.ndarray:
    """Three objects with non-contiguous ids on a 48x64 background."""
    a = np.zeros((H, W), np.uint8)
    a[5:20, 4:30] = 1
    a[25:40, 10:20] = 3
    a[10:30, 40:60] = 7
    return a


def _frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A frame whose brightness encodes i (survives h264) plus a gradient."""
    f = np.zeros((h, w, 3), np.uint8)
    f[...] = 10 + 20 * i
    f[:, :, 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    return f


def _write_video(path: Path, n: int = 12, fps: float = 10.0, h: int = H, w: int = W) -> None:
    gen = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, macro_block_size=1, ffmpeg_log_level="error")
    gen.send(None)
    for i in range(n):
        gen.send(_frame(i, h, w))
    gen.close()


# ----------------------------------------------------------------------------- palette / masks


def test_palette_is_the_voc_map() -> None:
    assert DAVIS_PALETTE.shape == (256, 3) and DAVIS_PALETTE.dtype == np.uint8
    expected = {
        0: (0, 0, 0),
        1: (128, 0, 0),
        2: (0, 128, 0),
        3: (128, 128, 0),
        4: (0, 0, 128),
        5: (128, 0, 128),
        7: (128, 128, 128),
        8: (64, 0, 0),
        255: (224, 224, 192),
    }
    for i, rgb in expected.items():
        assert tuple(DAVIS_PALETTE[i]) == rgb, i
    assert len({tuple(c) for c in DAVIS_PALETTE}) == 256


def test_palette_png_round_trip(tmp_path: Path) -> None:
    ids = _ids()
    out = tmp_path / "sub" / "00000.png"
    write_palette_png(out, ids)
    with Image.open(out) as im:
        assert im.mode == "P"
        assert tuple(im.getpalette()[3:6]) == (128, 0, 0)
    np.testing.assert_array_equal(read_mask(out), ids)
    assert [p.name for p in out.parent.iterdir()] == ["00000.png"]  # no temporary left behind


def test_grey_ids_round_trip(tmp_path: Path) -> None:
    ids = _ids()
    Image.fromarray(ids).save(tmp_path / "m.png")  # mode L
    assert Image.open(tmp_path / "m.png").mode == "L"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), ids)


def test_binary_0_255_becomes_one_object(tmp_path: Path) -> None:
    ids = _ids()
    Image.fromarray(np.where(ids > 0, 255, 0).astype(np.uint8)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), (ids > 0).astype(np.uint8))
    # near-binary (JPEG-like) values are thresholded at 128
    noisy = np.where(ids > 0, 250, 3).astype(np.uint8)
    noisy[0, 0], noisy[30, 45] = 120, 140
    Image.fromarray(noisy).save(tmp_path / "n.png")
    expected = (ids > 0).astype(np.uint8)
    expected[0, 0], expected[30, 45] = 0, 1
    np.testing.assert_array_equal(read_mask(tmp_path / "n.png"), expected)
    # and a binary mask written as RGB white-on-black
    Image.fromarray(np.repeat(np.where(ids > 0, 255, 0).astype(np.uint8)[..., None], 3, 2)).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png"), (ids > 0).astype(np.uint8))


def test_rgba_alpha_is_the_mask(tmp_path: Path) -> None:
    ids = _ids()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = np.random.default_rng(0).integers(0, 256, (H, W, 3))  # colours vary inside the object
    rgba[..., 3] = np.where(ids > 0, 255, 0)
    rgba[0, 0, 3] = 100  # below 128: background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), (ids > 0).astype(np.uint8))


def test_rgb_davis_colours_keep_their_ids(tmp_path: Path) -> None:
    ids = _ids()
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "d.png"), ids)


def test_rgb_other_colours_numbered_by_first_appearance(tmp_path: Path) -> None:
    ids = _ids()
    colours = {1: (10, 200, 30), 3: (250, 250, 0), 7: (0, 90, 255)}
    rgb = np.zeros((H, W, 3), np.uint8)
    for i, c in colours.items():
        rgb[ids == i] = c
    Image.fromarray(rgb).save(tmp_path / "c.png")
    # raster order: object 1 starts at row 5, object 7 at row 10, object 3 at row 25
    expected = np.select([ids == 1, ids == 7, ids == 3], [1, 2, 3], 0).astype(np.uint8)
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png"), expected)


def test_too_many_colours(tmp_path: Path) -> None:
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = np.arange(400).reshape(20, 20) % 256
    rgb[..., 1] = np.arange(400).reshape(20, 20) // 256 + 1
    Image.fromarray(rgb).save(tmp_path / "many.png")
    with pytest.raises(InputError, match="255"):
        read_mask(tmp_path / "many.png")


def test_check_mask_returns_ids_and_rejects_bad_masks() -> None:
    ids = _ids()
    assert check_mask(ids, (H, W)) == [1, 3, 7]
    with pytest.raises(InputError, match=r"64x48.*32x24"):
        check_mask(ids, (24, 32))
    with pytest.raises(InputError, match="draw at least one object"):
        check_mask(np.zeros((H, W), np.uint8), (H, W))
    many = np.arange(H * W, dtype=np.int32).reshape(H, W) % 300
    with pytest.raises(InputError, match="255"):
        check_mask(many, (H, W))


def test_mask_from_array() -> None:
    np.testing.assert_array_equal(mask_from_array(_ids().astype(np.float32)), _ids())
    assert mask_from_array(np.ones((2, 3), bool)).dtype == np.uint8
    for bad in (np.full((2, 2), 256), np.full((2, 2), -1), np.full((2, 2), 0.5), np.zeros((2, 2, 2))):
        with pytest.raises(InputError):
            mask_from_array(bad)


def test_missing_mask(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "nope.png")


def test_overlay_colours_and_boundary() -> None:
    frame = np.full((H, W, 3), 100, np.uint8)
    ids = _ids()
    out = overlay(frame, ids, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[ids == 0], frame[ids == 0])
    assert tuple(out[12, 15]) == (114, 50, 50)  # interior of object 1: halfway to (128, 0, 0)
    assert tuple(out[5, 15]) == (64, 0, 0)  # top edge of object 1: darker palette colour
    assert tuple(out[6, 15]) == (114, 50, 50)  # boundary is 1 px thin


# ----------------------------------------------------------------------------- frame sources


def test_video_read_lazily(tmp_path: Path) -> None:
    _write_video(tmp_path / "v.mp4", n=12, fps=10.0)
    src = open_frames(tmp_path / "v.mp4")
    assert len(src) == 12 and src.size == (H, W) and src.fps == pytest.approx(10.0)
    it = iter(src)
    stem, first = next(it)  # a generator: frames come one at a time
    assert stem == "00000" and first.shape == (H, W, 3) and first.dtype == np.uint8
    rest = list(it)
    stems = [stem] + [s for s, _ in rest]
    assert stems == [f"{i:05d}" for i in range(12)]
    means = [first[..., 0].mean()] + [f[..., 0].mean() for _, f in rest]
    assert all(abs(m - (10 + 20 * i)) < 6 for i, m in enumerate(means)), means


def test_video_options(tmp_path: Path) -> None:
    _write_video(tmp_path / "v.mp4", n=12)
    src = open_frames(tmp_path / "v.mp4", skip_first=2, every_nth=3, max_frames=3, max_side=32)
    got = list(src)
    assert [s for s, _ in got] == ["00002", "00005", "00008"] and len(src) == 3
    assert src.size == (24, 32) and all(f.shape == (24, 32, 3) for _, f in got)
    assert [s for s, _ in open_frames(tmp_path / "v.mp4", skip_first=10)] == ["00010", "00011"]
    with pytest.raises(InputError, match="skip_first"):
        len(open_frames(tmp_path / "v.mp4", skip_first=12))


def test_folder_sorted_by_name_and_options(tmp_path: Path) -> None:
    for _i, name in enumerate(["f2", "f10", "f1", "f3"]):
        Image.fromarray(_frame(int(name[1:]))).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub").mkdir()
    src = open_frames(tmp_path)
    assert len(src) == 4 and src.fps is None and src.size == (H, W)
    got = list(src)
    assert [s for s, _ in got] == ["f1", "f2", "f3", "f10"]
    assert [int(f[0, 0, 0]) for _, f in got] == [10 + 20 * i for i in (1, 2, 3, 10)]
    sub = open_frames(tmp_path, skip_first=1, every_nth=2, max_side=16)
    assert [s for s, _ in sub] == ["f2", "f10"] and sub.size == (12, 16)
    assert [s for s, _ in open_frames(tmp_path, max_frames=2)] == ["f1", "f2"]


def test_read_all_as_float_batch_and_refuses_what_memory_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        Image.fromarray(_frame(i)).save(tmp_path / f"{i}.png")
    seen = []
    batch = open_frames(tmp_path).read_all(seen.append)
    assert batch.shape == (3, H, W, 3) and batch.dtype == np.float32 and seen == [1, 2, 3]
    np.testing.assert_allclose(batch, np.stack([f for _, f in open_frames(tmp_path)]) / 255.0, atol=1e-6)
    from comfyui_cyclevos.media import frames as video_io

    monkeypatch.setattr(video_io, "available_memory", lambda: 1000)
    with pytest.raises(InputError, match="every_nth"):
        open_frames(tmp_path).read_all()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_frames(tmp_path / "missing.mp4")
    (tmp_path / "x.mp4").write_text("this is not a video")
    with pytest.raises(InputError, match="cannot read video"):
        open_frames(tmp_path / "x.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image frames"):
        open_frames(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_frame(0)).save(mixed / "a.png")
    Image.fromarray(_frame(0, 32, 32)).save(mixed / "b.png")
    with pytest.raises(InputError, match="same size"):
        open_frames(mixed)
    with pytest.raises(InputError, match="every_nth"):
        open_frames(tmp_path / "mixed", every_nth=0)


# ----------------------------------------------------------------------------- writers


def test_mask_and_overlay_videos(tmp_path: Path) -> None:
    ids = _ids()
    with MaskVideoWriter(tmp_path / "m.mp4", 10.0, (H, W)) as w:
        for _ in range(3):
            w.write(ids)
    with OverlayVideoWriter(tmp_path / "o.mp4", None, (H - 1, W - 1)) as w:  # odd size is padded
        for i in range(3):
            w.write(_frame(i, H - 1, W - 1), ids[:-1, :-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mp4", "o.mp4"]
    m = open_frames(tmp_path / "m.mp4")
    assert len(m) == 3 and m.size == (H, W)
    _, f = next(iter(m))
    assert np.abs(f[12, 15].astype(int) - (128, 0, 0)).max() < 24  # palette colour survives h264
    o = open_frames(tmp_path / "o.mp4")
    assert len(o) == 3 and o.size == (H, W)


def test_writers_leave_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with MaskVideoWriter(tmp_path / "m.mp4", 10.0, (H, W)) as w:
            w.write(_ids())
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with OverlayVideoWriter(tmp_path / "o.mp4", 10.0, (H, W)) as w:
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_palette_png_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "00000.png"
    write_palette_png(out, _ids())
    before = out.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        write_palette_png(out, np.zeros((H, W), np.uint8))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["00000.png"]
