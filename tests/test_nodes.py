"""The ComfyUI nodes, without ComfyUI: contracts, every node run on small tensors (also inside
torch.inference_mode(), as ComfyUI runs them), the pack loaded the way ComfyUI loads custom nodes, the
model cache, and the example workflows' wiring."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
B, H, W = 6, 64, 96


def _load_pack(module_path: Path = ROOT):
    """As ComfyUI's nodes.load_custom_node: a path-derived module name, the folder not on sys.path."""
    name = str(module_path).replace(".", "_x_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, module_path / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


PACK = _load_pack()
N = importlib.import_module(PACK.__name__ + ".nodes")
NODE_MODEL = importlib.import_module(PACK.__name__ + ".nodes.model")
NODE_PROPAGATION = importlib.import_module(PACK.__name__ + ".nodes.propagation")
M = N.NODE_CLASS_MAPPINGS


def _errors():
    return importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.errors")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from comfyui_cyclevos.model.checkpoint import save_checkpoint
    from comfyui_cyclevos.model.network import CycleVOSNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(path, CycleVOSNet(), extra={"gc_rate": 120.0})
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    with torch.inference_mode():  # as ComfyUI runs the loader: its weights must still work with autograd
        (m,) = M["CycleVOSLoadModel"]().load(str(checkpoint), "cpu", "fp32")
    assert not any(p.is_inference() for p in m.net.parameters())
    return m


def _ids() -> np.ndarray:
    a = np.zeros((H, W), np.uint8)
    a[8:30, 10:40] = 1
    a[36:60, 50:90] = 2
    return a


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """A square and a rectangle drifting right over a gradient: IMAGE (B, H, W, 3)."""
    f = torch.zeros(B, H, W, 3)
    f[..., 1] = torch.linspace(0, 0.6, W)
    for t in range(B):
        f[t, 8:30, 10 + t : 40 + t, 0] = 0.9
        f[t, 36:60, 50 - t : 90 - t, 2] = 0.8
    return f


@pytest.fixture(scope="module")
def objects():
    (obj, union) = M["CycleVOSFirstFrameMask"]().make(
        0, 0.5, False, mask=torch.from_numpy(np.stack([_ids() == 1, _ids() == 2])).float()
    )
    return obj


def _is_mask(m: torch.Tensor, b: int = B) -> None:
    assert isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.device.type == "cpu"
    assert tuple(m.shape) == (b, H, W), m.shape
    assert float(m.min()) >= 0 and float(m.max()) <= 1


# ----------------------------------------------------------------------------- contracts


def test_the_pack_loads_like_comfyui_does(tmp_path) -> None:
    """A copy under another folder name with dots (ComfyUI maps '.' to '_x_'), relative imports only."""
    assert set(PACK.NODE_CLASS_MAPPINGS) == set(PACK.NODE_DISPLAY_NAME_MAPPINGS)
    assert len(PACK.NODE_CLASS_MAPPINGS) == 13
    assert PACK.WEB_DIRECTORY == "./web"
    folder = tmp_path / "custom_nodes" / "comfyui-cyclevos.v1"
    folder.mkdir(parents=True)
    for name in ("__init__.py", "nodes", "comfyui_cyclevos", "web"):
        (folder / name).symlink_to(ROOT / name)
    pack = _load_pack(folder)
    assert pack.__name__.endswith("comfyui-cyclevos_x_v1") and str(folder) not in sys.path
    assert list(pack.NODE_CLASS_MAPPINGS) == list(PACK.NODE_CLASS_MAPPINGS)
    assert pack.NODE_CLASS_MAPPINGS["CycleVOSPropagate"] is not M["CycleVOSPropagate"]  # its own copy


def test_the_core_imports_as_an_installed_package() -> None:
    import pkgutil

    import comfyui_cyclevos
    from comfyui_cyclevos.cycle.correction import correct_sequence  # noqa: F401

    assert comfyui_cyclevos.__version__
    for info in pkgutil.walk_packages(comfyui_cyclevos.__path__, "comfyui_cyclevos."):
        importlib.import_module(info.name)
    assert not {"comfy", "folder_paths", "nodes"} & set(sys.modules), "the library must never import ComfyUI"


@pytest.mark.parametrize("key", sorted(M))
def test_node_contract(key: str) -> None:
    cls = M[key]
    assert cls.CATEGORY == "cyclevos"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 30
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    for name, (kind, options) in inputs.items():
        assert isinstance(kind, (str, list)), name
        assert options.get("tooltip"), f"{key}.{name} has no tooltip"
        if kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], name
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    assert set(inputs) <= set(params), f"{key}.{cls.FUNCTION} lacks {set(inputs) - set(params)}"
    for name, _p in params.items():
        if name != "self":
            assert name in inputs, f"{key}.{cls.FUNCTION} takes {name}, not an input"
    for name in spec.get("optional", {}):
        assert params[name].default is None, name
    assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert key in PACK.NODE_DISPLAY_NAME_MAPPINGS


def test_output_node_and_upload_widget() -> None:
    assert M["CycleVOSSaveMasks"].OUTPUT_NODE is True
    video = M["CycleVOSLoadVideo"].INPUT_TYPES()["required"]["video"]
    assert video[1]["video_upload"] is True


# ----------------------------------------------------------------------------- load video / first frame


def _write_mask(path: Path, h: int = 48, w: int = 80, objects: int = 1) -> None:
    from comfyui_cyclevos.media.writers import write_palette_png

    ids = np.zeros((h, w), np.uint8)
    for o in range(objects):
        ids[5 + 20 * o : 15 + 20 * o, 10:30] = o + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_palette_png(path, ids)


def test_load_video_from_folder_walks_the_shots_with_the_queue(tmp_path, monkeypatch) -> None:
    """Queue (N): index 0, 1, ... picks each video of the folder by name with the mask of its stem (beside
    it, or in masks/), and Save Masks, given the shot's filename_prefix, names the output after it."""
    monkeypatch.chdir(tmp_path)  # the input folder outside ComfyUI
    shots = tmp_path / "shots"
    shots.mkdir()
    _write_video(shots / "b.mp4", n=4)
    _write_mask(shots / "b.png", objects=2)
    _write_video(shots / "a.mp4", n=3)
    _write_mask(shots / "masks" / "a.png")
    (shots / "c.mp4").write_bytes(b"")  # no mask
    node = M["CycleVOSLoadVideoFromFolder"]
    assert node.INPUT_TYPES()["required"]["index"][1]["control_after_generate"] is True
    frames, mask, name, prefix, fps, count, shot_count = node().load("shots", 0)
    assert (name, prefix, count, shot_count) == ("a", "cyclevos/shots/a", 3, 3)
    assert tuple(frames.shape) == (3, 48, 80, 3) and fps == pytest.approx(12.0)
    assert tuple(mask.shape) == (1, 48, 80) and mask.dtype == torch.float32 and float(mask.sum()) == 200
    frames, mask, name, prefix, *_ = node().load("shots", 1, max_frames=2)
    assert (name, prefix, frames.shape[0], mask.shape[0]) == ("b", "cyclevos/shots/b", 2, 2)  # two objects
    with pytest.raises(_errors().InputError, match="no mask for c.mp4"):
        node().load("shots", 2)
    with pytest.raises(_errors().InputError, match="has 3 shots"):
        node().load("shots", 3)
    for outside in ("..", "/etc", "shots/../.."):
        with pytest.raises(_errors().InputError, match="outside"):
            node().load(outside, 0)
        assert "outside" in node.VALIDATE_INPUTS(outside)
    assert node.VALIDATE_INPUTS("shots") is True and "not found" in node.VALIDATE_INPUTS("gone")
    assert node.IS_CHANGED("shots", 0) != node.IS_CHANGED("shots", 1)
    (obj, _) = M["CycleVOSFirstFrameMask"]().make(0, 0.5, False, mask=mask)
    assert obj.object_ids == [1, 2]
    saved = M["CycleVOSSaveMasks"]().save(prefix, True, False, 12.0, mask=mask[:1].expand(2, -1, -1))
    assert Path(saved["result"][0]) == tmp_path / "output" / "cyclevos" / "shots" / "b_00001_"


def _write_video(path: Path, n: int = 9, h: int = 48, w: int = 80) -> None:
    gen = imageio_ffmpeg.write_frames(str(path), (w, h), fps=12.0, macro_block_size=1, ffmpeg_log_level="error")
    gen.send(None)
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[...] = 20 * i
        gen.send(f)
    gen.close()


def test_load_video_options_fingerprint_and_validation(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write_video(tmp_path / "clip.mp4")
    (tmp_path / "notes.txt").write_text("x")
    node = M["CycleVOSLoadVideo"]
    assert node.INPUT_TYPES()["required"]["video"][0] == ["clip.mp4"]
    images, fps, count = node().load("clip.mp4", max_frames=3, skip_first=1, every_nth=2, max_side=40)
    assert tuple(images.shape) == (3, 24, 40, 3) and images.dtype == torch.float32 and count == 3
    assert fps == pytest.approx(6.0)
    assert float(images.max()) <= 1 and abs(float(images[1].mean()) - 60 / 255) < 0.05  # frame 3 of the file
    assert node.VALIDATE_INPUTS("clip.mp4") is True
    message = node.VALIDATE_INPUTS("gone.mp4")
    assert isinstance(message, str) and "gone.mp4" in message
    before = node.IS_CHANGED("clip.mp4", max_frames=3)
    assert before == node.IS_CHANGED("clip.mp4", max_frames=5)
    _write_video(tmp_path / "clip.mp4", n=10)
    assert node.IS_CHANGED("clip.mp4") != before


def test_load_video_refuses_what_memory_cannot_hold(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write_video(tmp_path / "clip.mp4")
    video_io = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.media.frames")
    monkeypatch.setattr(video_io, "available_memory", lambda: 1000)
    with pytest.raises(_errors().InputError, match="max_side"):
        M["CycleVOSLoadVideo"]().load("clip.mp4")


def test_first_frame_mask_from_masks_and_from_colours() -> None:
    node = M["CycleVOSFirstFrameMask"]()
    ids = _ids()
    masks = torch.from_numpy(np.stack([ids == 1, ids == 2])).float()
    obj, union = node.make(2, 0.5, False, mask=masks)
    assert obj.frame_index == 2 and obj.object_ids == [1, 2] and (obj.ids == ids).all()
    _is_mask(union, 1)
    from comfyui_cyclevos.media.palette import DAVIS_PALETTE

    colours = torch.from_numpy(DAVIS_PALETTE[ids * 3]).float()[None] / 255  # palette colours of ids 3 and 6
    obj, _ = node.make(0, 0.5, False, image=colours)
    assert obj.object_ids == [3, 6] and (obj.ids == ids * 3).all()
    obj, _ = node.make(0, 0.5, True, mask=1 - masks[:1])  # a cut-out read by LoadImage (1 - alpha)
    assert obj.object_ids == [1]


def test_first_frame_mask_errors_are_clear() -> None:
    node = M["CycleVOSFirstFrameMask"]()
    err = _errors().InputError
    with pytest.raises(err, match="64x64 placeholder"):
        node.make(0, 0.5, False, mask=torch.zeros(1, 64, 64))
    with pytest.raises(err, match="either"):
        node.make(0, 0.5, False)
    with pytest.raises(err, match="mask 2 of 2 is empty"):
        node.make(0, 0.5, False, mask=torch.stack([torch.ones(H, W), torch.zeros(H, W)]))


# ----------------------------------------------------------------------------- model


def test_model_cache_returns_the_same_object(checkpoint, model, tmp_path) -> None:
    again = M["CycleVOSLoadModel"]().load(str(checkpoint), "cpu", "fp32")[0]
    assert again is model and again.gc_rate == 120.0
    assert not any(p.requires_grad for p in model.net.parameters())
    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint.read_bytes())
    other = NODE_MODEL.load_model(copy, "cpu")
    assert other is not model and NODE_MODEL.load_model(copy, "cpu") is other
    with pytest.raises(_errors().InputError, match="fp16"):
        NODE_MODEL.load_model(checkpoint, "cpu", "fp16")
    with pytest.raises(_errors().InputError, match="not found"):
        M["CycleVOSLoadModel"]().load("no-such.pt")


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize("inference", [False, True], ids=["grad", "inference_mode"])
def test_propagate_select_overlay(model, frames, objects, inference) -> None:
    with torch.inference_mode(inference):
        mask, masks = M["CycleVOSPropagate"]().propagate(model, frames, objects, 2, 4, 64, True, 2, 2, 0.0)
        _is_mask(mask)
        assert masks.ids.dtype == torch.uint8 and tuple(masks.ids.shape) == (B, H, W)
        assert masks.object_ids == [1, 2]
        assert (masks.ids[0].numpy() == _ids()).all()  # the drawn frame is returned as drawn
        assert torch.equal(mask, (masks.ids > 0).float())
        (one,) = M["CycleVOSSelectObject"]().select(masks, 2)
        _is_mask(one)
        assert torch.equal(one, (masks.ids == 2).float())
        with pytest.raises(_errors().InputError, match="not among"):
            M["CycleVOSSelectObject"]().select(masks, 7)
        (drawn,) = M["CycleVOSOverlay"]().draw(frames, 0.5, 1, masks=masks)
        assert drawn.shape == frames.shape and drawn.dtype == torch.float32
        (drawn,) = M["CycleVOSOverlay"]().draw(frames, 0.5, 0, mask=mask)
        assert drawn.shape == frames.shape


def test_propagate_from_a_later_frame_goes_both_ways(model, frames) -> None:
    obj, _ = M["CycleVOSFirstFrameMask"]().make(3, 0.5, False, mask=torch.from_numpy(_ids() > 0).float()[None])
    calls = []

    class Bar:
        def __init__(self, total):
            calls.append(("total", total))

        def update_absolute(self, value, total=None, preview=None):
            calls.append(value)

    with _fake_comfy(Bar):
        with torch.inference_mode():
            mask, masks = M["CycleVOSPropagate"]().propagate(
                model, frames, obj, 5, 16, 64, False, 5, 10, 0.0, adapt_steps=0
            )
    _is_mask(mask)
    assert (masks.ids[3].numpy() == (_ids() > 0)).all()
    assert calls[0] == ("total", B) and calls[-1] == B  # every frame once
    # frames on both sides are the library's: forward from frame 3 to the end, backward from it to frame 0
    InferenceCore = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.inference.engine").InferenceCore
    config_module = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.config")
    config = config_module.InferenceConfig.from_options(
        size=64, precision=model.precision.name, gc=False, gc_every=5, gc_steps=10, mem_every=5, mem_capacity=16
    )
    config.confidence.enabled = True  # as the node: confidence on unless turned off
    drawn = (_ids() > 0).astype(np.uint8)
    for order in ([3, 4, 5], [3, 2, 1, 0]):
        engine = InferenceCore(model.net, config, model.device, model.precision)
        for t in order:
            labels = engine.labels(engine.step(frames[t], drawn if t == 3 else None))
            assert (masks.ids[t].numpy() == labels).all(), t


def test_propagate_resizes_a_mask_drawn_at_another_resolution(model, frames) -> None:
    big = np.kron(_ids(), np.ones((2, 2), np.uint8))
    obj, _ = M["CycleVOSFirstFrameMask"]().make(
        0, 0.5, False, image=torch.from_numpy(big > 0).float()[None, ..., None].expand(1, 2 * H, 2 * W, 3)
    )
    mask, _ = M["CycleVOSPropagate"]().propagate(model, frames[:2], obj, 5, 16, 64, False, 5, 10, 0.0)
    _is_mask(mask, 2)


def _fake_folder_paths(monkeypatch, root: Path) -> None:
    """ComfyUI's folder_paths, with its temp and output folders under ``root``."""
    fp = types.ModuleType("folder_paths")
    fp.get_temp_directory = lambda: str(root / "temp")
    fp.get_output_directory = lambda: str(root / "output")
    fp.get_save_image_path = lambda prefix, folder, w=0, h=0: (str(Path(folder) / "sub"), prefix, 7, "sub", prefix)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)


def test_propagate_shows_an_animated_overlay_in_the_node_and_on_the_progress_bar(
    model, frames, objects, tmp_path, monkeypatch
) -> None:
    from PIL import Image, ImageSequence

    previews = []

    class Bar:
        def __init__(self, total):
            pass

        def update_absolute(self, value, total=None, preview=None):
            previews.append(preview)

    args = (model, frames, objects, 5, 16, 64, False, 5, 10, 0.0)
    plain = M["CycleVOSPropagate"]().propagate(*args, adapt_steps=0)  # outside ComfyUI: the outputs alone
    _fake_folder_paths(monkeypatch, tmp_path)
    with _fake_comfy(Bar):
        out = M["CycleVOSPropagate"]().propagate(*args, adapt_steps=0)
        assert isinstance(M["CycleVOSPropagate"]().propagate(*args, preview=False, adapt_steps=0), tuple)
    assert torch.equal(out["result"][1].ids, plain[1].ids)
    (shown,) = out["ui"]["images"]
    assert out["ui"]["animated"] == (True,) and shown["type"] == "temp"
    picture = Image.open(tmp_path / "temp" / shown["subfolder"] / shown["filename"])
    pictures = [np.asarray(p.convert("RGB"), np.float32) for p in ImageSequence.Iterator(picture)]
    assert len(pictures) == B and pictures[0].shape == (H, W, 3)
    video_io = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.media.overlay")
    for t in (0, B - 1):  # each picture is its frame with its objects drawn, in video order
        frame = (frames[t] * 255 + 0.5).to(torch.uint8).numpy()
        drawn = video_io.overlay(frame, plain[1].ids[t].numpy()).astype(np.float32)
        assert np.abs(pictures[t] - drawn).mean() < 0.3 * np.abs(frame - drawn).mean()
    assert len(previews) == 2 * B  # two runs in ComfyUI: with a picture of every frame while it ran, then preview off
    assert all(kind == "JPEG" and image.size == (W, H) for kind, image, _ in previews[:B])
    assert previews[B:] == [None] * B


class _Interrupted(Exception):
    pass


class _fake_comfy:
    """comfy.utils.ProgressBar and comfy.model_management as ComfyUI provides them."""

    def __init__(self, bar=None, interrupt_after: int | None = None):
        self.bar, self.interrupt_after, self.checks = bar, interrupt_after, 0

    def __enter__(self):
        comfy = types.ModuleType("comfy")
        utils = types.ModuleType("comfy.utils")
        mm = types.ModuleType("comfy.model_management")
        utils.ProgressBar = self.bar or (
            lambda total: types.SimpleNamespace(update_absolute=lambda v, t=None, preview=None: None)
        )

        def check():
            self.checks += 1
            if self.interrupt_after is not None and self.checks > self.interrupt_after:
                raise _Interrupted()

        mm.throw_exception_if_processing_interrupted = check
        patcher = types.ModuleType("comfy.model_patcher")
        comfy.utils, comfy.model_management, comfy.model_patcher = utils, mm, patcher
        self.mm, self.patcher_module = mm, patcher
        names = ("comfy", "comfy.utils", "comfy.model_management", "comfy.model_patcher")
        self.saved = {k: sys.modules.get(k) for k in names}
        sys.modules.update(dict(zip(names, (comfy, utils, mm, patcher))))
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_propagate_stops_when_cancelled(model, frames, objects) -> None:
    with _fake_comfy(interrupt_after=2) as fake:
        with pytest.raises(_Interrupted):
            M["CycleVOSPropagate"]().propagate(model, frames, objects, 5, 16, 64, False, 5, 10, 0.0)
    assert fake.checks == 3


@pytest.mark.parametrize(
    "keys,source,encoder,second,gc",
    [
        ("stm", "stm", "resnet50", "others", True),
        ("stm_cycle_resnet50", "stm-cycle", "resnet50", "background", True),
        ("stm_cycle_resnet18", "stm-cycle", "resnet18", "background", True),
        ("stm_cycle_resnet18", "stm-cycle", "resnet18", "background", False),
    ],
)
def test_nodes_run_a_converted_checkpoint(tmp_path, frames, objects, keys, source, encoder, second, gc) -> None:
    """The paper's own networks (STM / STM-cycle, converted) through the same nodes, in inference mode
    (with correction for each kind; cyclevos segment runs each kind with and without it)."""
    from conftest import random_state, shapes, write_source

    from comfyui_cyclevos.model.convert import convert

    convert(write_source(random_state(shapes(keys)), tmp_path / "src.pth", source), tmp_path / "converted.pt", source)
    with torch.inference_mode():
        (m,) = M["CycleVOSLoadModel"]().load(str(tmp_path / "converted.pt"), "cpu", "fp32")
        assert m.net.config.encoder == encoder and m.net.config.second_mask == second
        mask, masks = M["CycleVOSPropagate"]().propagate(m, frames, objects, 2, 4, 64, gc, 2, 2, 0.0)
        _is_mask(mask)
        assert masks.object_ids == [1, 2] and (masks.ids[0].numpy() == _ids()).all()
        erf, _, _ = M["CycleVOSCycleERF"]().compute(m, frames, 2, mask, 0, 2, 64)
        _is_mask(erf, 1)


@pytest.mark.parametrize("inference", [False, True], ids=["grad", "inference_mode"])
def test_gradient_correct_any_mask_sequence(model, frames, inference) -> None:
    masks = torch.zeros(B, H, W)
    masks[:, 8:30, 10:40] = 1
    masks[4] = 0  # a frame the other tool lost the object on
    with torch.inference_mode(inference):
        (out,) = M["CycleVOSGradientCorrect"]().correct(model, frames, masks, 0, 2, 0.0, 2, 64, soft_edges=True)
        _is_mask(out)
        assert torch.equal(out[0], masks[0]) and torch.equal(out[1], masks[1])  # reference and skipped frames kept
        assert not torch.equal(out[2], masks[2])  # the mask moved (seen in its soft values)
        (out2,) = M["CycleVOSGradientCorrect"]().correct(
            model, frames, masks, 0, 1, 50.0, 1, 64, reference_mask=masks[:1]
        )
        _is_mask(out2)
    with pytest.raises(_errors().InputError, match="one mask per frame"):
        M["CycleVOSGradientCorrect"]().correct(model, frames, masks[:3], 0, 1, 0.0, 1, 64)


def test_gradient_correct_and_propagate_give_clean_masks(model, frames, objects) -> None:
    """Issue 30: a large rate leaves soft residue all over the frame; the MASK outputs stay 0/1 unless
    soft_edges is asked for, and then carry nothing beyond the edge band."""
    correction = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.cycle.correction")
    filters = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.filters")
    masks = torch.zeros(B, H, W)
    masks[:, 8:30, 10:40] = 1
    with torch.inference_mode():
        (hard,) = M["CycleVOSGradientCorrect"]().correct(model, frames, masks, 0, 2, 1e4, 1, 64)
        (soft,) = M["CycleVOSGradientCorrect"]().correct(model, frames, masks, 0, 2, 1e4, 1, 64, soft_edges=True)
        mask, _ = M["CycleVOSPropagate"]().propagate(model, frames, objects, 2, 4, 64, True, 1, 2, 1e4)
    _is_mask(hard), _is_mask(soft), _is_mask(mask)
    assert set(hard.unique().tolist()) <= {0.0, 1.0} and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).any()  # soft values where asked for
    band = correction.edge_band(H, W, 64)
    for t in range(1, B):
        far = torch.from_numpy(~filters.dilate_disk(soft[t].numpy() > 0.5, band))
        assert float((soft[t] * far).max()) == 0.0


def test_correct_sequence_in_the_library_keeps_detail(model, frames) -> None:
    correction = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.cycle.correction")
    masks = torch.zeros(3, 2, H, W)
    masks[:, 0, 8:30, 10:40] = 1
    masks[:, 1, 36:60, 50:90] = 1
    seen = []
    out = correction.correct_sequence(
        model.net, frames[:3], masks, steps=1, rate=0.0, size=32, progress=lambda d, t: seen.append((d, t))
    )
    assert out.shape == masks.shape and torch.allclose(out, masks, atol=1e-5)  # alpha 0: nothing moves, nothing blurs
    assert seen == [(0, 2), (1, 2), (2, 2)]


@pytest.mark.parametrize("inference", [False, True], ids=["grad", "inference_mode"])
def test_cycle_erf(model, frames, inference) -> None:
    target = torch.zeros(B, H, W)
    target[:, 8:30, 12:42] = 1
    with torch.inference_mode(inference):
        erf, heat, peak = M["CycleVOSCycleERF"]().compute(model, frames, 2, target, 0, 3, 64)
        _, outlined, _ = M["CycleVOSCycleERF"]().compute(model, frames, 2, target, 0, 3, 64, 0.0, target)
        scaled, _, again = M["CycleVOSCycleERF"]().compute(model, frames, 2, target, 0, 3, 64, 2 * peak)
    _is_mask(erf, 1)
    assert tuple(heat.shape) == (1, H, W, 3) and heat.dtype == torch.float32 and float(heat.max()) <= 1
    assert peak > 0 and again == pytest.approx(peak) and torch.allclose(scaled, erf / 2, atol=1e-6)
    edge = torch.zeros(H, W, dtype=torch.bool)
    edge[8:30, 12:42] = True
    edge[10:28, 14:40] = False  # the object's outline, 2 pixels wide, is drawn white
    assert (outlined[0][edge] == 1).all() and not (heat[0][edge] == 1).all()
    with pytest.raises(_errors().InputError, match="does not exist"):
        M["CycleVOSCycleERF"]().compute(model, frames, B, target, 0, 1, 64)


def test_save_masks_png_and_video(model, frames, objects, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, masks = M["CycleVOSPropagate"]().propagate(model, frames, objects, 5, 16, 64, False, 5, 10, 0.0)
    node = M["CycleVOSSaveMasks"]()
    with torch.inference_mode():
        res = node.save("run/bear", True, True, 12.0, masks=masks)
    folder = Path(res["result"][0])
    assert folder == tmp_path / "output" / "run" / "bear_00001_"
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(B)]
    from comfyui_cyclevos.media.masks import read_mask

    assert (read_mask(pngs[0]) == masks.ids[0].numpy()).all()
    assert (tmp_path / "output" / "run" / "bear_00001_.mp4").stat().st_size > 0
    assert res["ui"]["images"] == [{"filename": "bear_00001_.mp4", "subfolder": "run", "type": "output"}]
    res = node.save("run/bear", True, False, 12.0, mask=(masks.ids > 0).float())
    assert Path(res["result"][0]).name == "bear_00002_" and len(res["ui"]["images"]) == B
    assert res["ui"]["images"][0]["subfolder"] == "run/bear_00002_"
    with pytest.raises(_errors().InputError, match="outside"):
        node.save("../escape", True, False, 12.0, masks=masks)


def test_an_interrupted_save_leaves_no_complete_looking_folder(model, frames, objects, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, masks = M["CycleVOSPropagate"]().propagate(model, frames, objects, 5, 16, 64, False, 5, 10, 0.0)
    video_io = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.media.writers")
    real, written = video_io.write_palette_png, []

    def fail_on_the_fourth(path, ids):
        if len(written) == 3:
            raise KeyboardInterrupt  # the user cancels, or the disk fills
        written.append(path)
        real(path, ids)

    monkeypatch.setattr(video_io, "write_palette_png", fail_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        M["CycleVOSSaveMasks"]().save("run/bear", True, False, 12.0, masks=masks)
    assert len(written) == 3
    assert list((tmp_path / "output" / "run").iterdir()) == []  # neither the folder nor its partial copy


# ----------------------------------------------------------------------------- packaging


def test_requirements_never_touch_torch() -> None:
    lines = [ln.split("#")[0].strip().lower() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {ln.split(">")[0].split("=")[0].split("<")[0].strip() for ln in lines if ln}
    assert names == {"numpy", "pillow", "imageio", "imageio-ffmpeg", "click"}
    source = (ROOT / "install.py").read_text()
    assert "torch==" in source and "--upgrade" not in source


WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN")


def _workflows():
    """API-format twins live in example_workflows/api/: ComfyUI's template browser lists every *.json
    directly in example_workflows/ and can only open the UI format."""
    return sorted((ROOT / "example_workflows" / "api").glob("*.api.json"))


def test_there_are_workflow_twins() -> None:
    apis = _workflows()
    assert len(apis) >= 3
    for api in apis:
        assert (api.parent.parent / api.name.replace(".api.json", ".json")).is_file(), api
    assert not list((ROOT / "example_workflows").glob("*.api.json"))


@pytest.mark.parametrize("api", _workflows(), ids=lambda p: p.name)
def test_example_workflow_wiring(api: Path) -> None:
    """Every cyclevos node of an API workflow has its required inputs, links point at existing outputs of
    the right type, and the UI twin has the same nodes with the same widget values."""
    prompt = json.loads(api.read_text())
    ui = json.loads((api.parent.parent / api.name.replace(".api.json", ".json")).read_text())
    ui_nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert set(ui_nodes) == set(prompt)
    for node_id, node in prompt.items():
        assert ui_nodes[node_id]["type"] == node["class_type"]
        cls = M.get(node["class_type"])
        if cls is None:
            continue  # a ComfyUI core node
        spec = cls.INPUT_TYPES()
        for name in spec["required"]:
            assert name in node["inputs"], f"{api.name}: node {node_id} lacks {name}"
        inputs = {**spec["required"], **spec.get("optional", {})}
        assert set(node["inputs"]) <= set(inputs), f"{api.name}: node {node_id} has unknown inputs"
        for name, value in node["inputs"].items():
            if isinstance(value, list):  # a link: the source's output type must match
                src_cls = M.get(prompt[value[0]]["class_type"])
                if src_cls is not None:
                    assert src_cls.RETURN_TYPES[value[1]] == inputs[name][0], f"{api.name}: {node_id}.{name}"
        # widgets in the order the UI creates them (the upload button adds one value after the file combo)
        widget_names = [n for n, (kind, _) in inputs.items() if isinstance(kind, list) or kind in WIDGET_KINDS]
        values = list(ui_nodes[node_id]["widgets_values"])
        if node["class_type"] == "CycleVOSLoadVideo":
            assert values.pop() == "image"
        for i in reversed(range(len(widget_names))):  # the UI stores an INT's control_after_generate after it
            if inputs[widget_names[i]][1].get("control_after_generate"):
                assert values.pop(i + 1) in ("fixed", "increment", "decrement", "randomize"), node_id
        assert len(values) == len(widget_names), node_id
        for name, value in zip(widget_names, values):
            if not isinstance(node["inputs"].get(name), list):
                assert node["inputs"][name] == value, f"{api.name}: {node_id}.{name}"
    links = {link[0]: link for link in ui["links"]}
    for n in ui["nodes"]:
        for inp in n.get("inputs", []):
            if inp.get("link") is not None:
                assert links[inp["link"]][3] == n["id"]


def test_every_example_has_a_thumbnail_and_fits_a_screen() -> None:
    """Issue 30: the Templates browser shows NAME.jpg beside each example (a grey card without it) under the
    file name as title; each example opens readable at fit view on 1920x1080 (at most ~1,900 px wide and
    ~1,050 tall, no two nodes overlapping); the Cycle-ERF example outlines the reference object."""
    from PIL import Image

    examples = sorted((ROOT / "example_workflows").glob("*.json"))
    assert len(examples) >= 6
    for f in examples:
        assert not f.stem.startswith("cyclevos_"), f"{f.name}: a title people read, not a raw file name"
        thumb = f.with_suffix(".jpg")
        assert thumb.is_file(), f"{thumb.name} is missing"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width <= 512 and thumb.stat().st_size < 100_000, thumb.name
        ui = json.loads(f.read_text())
        boxes = [
            (n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]
        ]
        width = max(b[2] for b in boxes) - min(b[0] for b in boxes)
        height = max(b[3] for b in boxes) - min(b[1] for b in boxes)
        assert width <= 1900 and height <= 1050, (f.name, width, height)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (f.name, a, b)
    erf = json.loads((ROOT / "example_workflows" / "api" / "Cycle-ERF heat map.api.json").read_text())
    assert any(n["class_type"] == "CycleVOSCycleERF" and "reference_mask" in n["inputs"] for n in erf.values())


def test_confidence_node_reads_the_scores_of_propagate(model, frames, objects) -> None:
    _, masks = M["CycleVOSPropagate"]().propagate(model, frames, objects, 5, 16, 64, True, 2, 1, 0.0)
    assert sorted(masks.scores) == [2, 4]  # the correction schedule, from the drawn frame 0
    assert all(set(s) == {1, 2} and all(0 <= v <= 1 for v in s.values()) for s in masks.scores.values())
    plot, suggested, rows = M["CycleVOSConfidence"]().report(masks, 1)
    assert (
        tuple(plot.shape) == (1, 240, 640, 3)
        and plot.dtype == torch.float32
        and 0 <= float(plot.min()) <= float(plot.max()) <= 1
    )
    worst = min(masks.scores, key=lambda t: min(masks.scores[t].values()))
    assert suggested in (str(worst), "none needed")
    # issue 30: high scores everywhere -> none needed; one clear drop -> that frame
    common = importlib.import_module(PACK.__name__ + ".nodes.common")
    high = {t: {1: 0.93 + 0.01 * (t % 3), 2: 0.95} for t in range(B)}
    _, none, _ = M["CycleVOSConfidence"]().report(common.ObjectMasks(masks.ids, [1, 2], high), 3)
    assert none == "none needed"
    _, drop, _ = M["CycleVOSConfidence"]().report(
        common.ObjectMasks(masks.ids, [1, 2], {**high, 4: {1: 0.7, 2: 0.95}}), 3
    )
    assert drop == "4"
    lines = rows.splitlines()
    assert lines[0] == "frame,object,score" and len(lines) == 1 + 2 * 2
    _, quiet = M["CycleVOSPropagate"]().propagate(model, frames, objects, 5, 16, 64, True, 2, 1, 0.0, confidence=False)
    assert quiet.scores == {}
    with pytest.raises(_errors().InputError, match="confidence"):
        M["CycleVOSConfidence"]().report(quiet, 1)


def test_keyframes_chain_into_propagate(model, frames) -> None:
    first, _ = M["CycleVOSFirstFrameMask"]().make(0, 0.5, False, mask=torch.from_numpy(_ids() == 1).float()[None])
    fix = np.zeros((H, W), np.uint8)
    fix[20:40, 30:60] = 1  # object 1 is here on frame 3 ...
    fix[44:60, 60:88] = 2  # ... and object 2 appears
    both = torch.from_numpy(np.stack([fix == 1, fix == 2])).float()
    chain, preview = M["CycleVOSKeyframe"]().add(first, 3, 0.5, False, mask=both)
    _is_mask(preview, 1)
    assert sorted(chain.keyframes) == [0, 3] and chain.object_ids == [1, 2] and chain.frame_index == 0
    _, masks = M["CycleVOSPropagate"]().propagate(model, frames, chain, 5, 16, 64, False, 5, 10, 0.0)
    assert masks.object_ids == [1, 2]
    assert (masks.ids[0].numpy() == (_ids() == 1)).all() and (masks.ids[3].numpy() == fix).all()
    assert not (masks.ids[:3] == 2).any()  # object 2 exists from frame 3 on
    with pytest.raises(_errors().InputError, match="already has a keyframe"):
        M["CycleVOSKeyframe"]().add(chain, 3, 0.5, False, mask=both)


def test_refine_edges_grows_and_feathers(model, frames, objects) -> None:
    _, masks = M["CycleVOSPropagate"]().propagate(model, frames, objects, 5, 16, 64, False, 5, 10, 0.0)
    same, hard = M["CycleVOSRefineEdges"]().refine(masks, 0, False, 0, 0.0)
    assert torch.equal(same.ids, masks.ids) and torch.equal(hard, (masks.ids > 0).float())
    grown, soft = M["CycleVOSRefineEdges"]().refine(masks, 2, True, 20, 1.5)
    _is_mask(soft)
    assert grown.object_ids == masks.object_ids and grown.scores == masks.scores
    assert (grown.ids[0] > 0).sum() > (masks.ids[0] > 0).sum()  # the drawn frame's objects grew
    assert ((soft > 0.05) & (soft < 0.95)).any()  # soft edges


@pytest.mark.parametrize("key", sorted(M))
def test_every_node_has_a_help_page(key) -> None:
    """web/docs/<NodeKey>.md (the frontend's node help): every input under Inputs and every output under
    Outputs as a list item "- **name**", no table (the help sidebar is ~306 px wide: a table's last column
    is cut off), its pictures present."""
    import re

    page = ROOT / "web" / "docs" / f"{key}.md"
    text = page.read_text()
    assert not [line for line in text.splitlines() if line.lstrip().startswith("|")], f"{page.name} has a table"
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M))
    spec = M[key].INPUT_TYPES()
    for section, names in (
        ("Inputs", [*spec.get("required", {}), *spec.get("optional", {})]),
        ("Outputs", list(M[key].RETURN_NAMES)),
    ):
        items = re.findall(r"^- \*\*(\w+)\*\*", sections.get(section, ""), flags=re.M)
        assert items == names, f"{page.name} {section}: {items} != {names}"
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert all((page.parent / p).is_file() for p in pictures)


def test_help_pages_do_not_share_pictures() -> None:
    """Each picture shows what its own page describes (issue 30: six pages showed propagate.jpg under
    captions of their own)."""
    import re

    used = {}
    for page in sorted((ROOT / "web" / "docs").glob("*.md")):
        for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert picture not in used, f"{page.name} reuses {picture} of {used[picture]}"
            used[picture] = page.name


def test_propagate_takes_comfyui_s_video(model, frames, objects, tmp_path) -> None:
    """VIDEO from a file is streamed from get_stream_source (a path or bytes); one built from components
    uses its IMAGE batch. The masks match the IMAGE path on the same (decoded) frames."""
    import io

    path = tmp_path / "clip.mp4"
    _write_video(path, n=6, h=H, w=W)

    class VideoFromFile:  # comfy_api.input_impl.VideoFromFile's interface
        def __init__(self, src):
            self.src = src

        def get_stream_source(self):
            return self.src

        def get_components(self):
            raise AssertionError("a file-backed video must not be decoded whole")

    class VideoFromComponents:
        def __init__(self, images):
            self.images = images

        def get_components(self):
            return types.SimpleNamespace(images=self.images, frame_rate=12)

    video_io = importlib.import_module(PACK.__name__ + ".comfyui_cyclevos.media.frames")
    decoded = torch.from_numpy(video_io.open_frames(path).read_all())
    node = M["CycleVOSPropagate"]()
    args = (5, 16, 64, False, 5, 10, 0.0)
    _, expected = node.propagate(model, decoded, objects, *args)
    for video in (VideoFromFile(str(path)), VideoFromFile(io.BytesIO(path.read_bytes())), VideoFromComponents(decoded)):
        mask, masks = node.propagate(model, None, objects, *args, video=video)
        assert torch.equal(masks.ids, expected.ids), type(video).__name__
        _is_mask(mask, decoded.shape[0])
    with pytest.raises(_errors().InputError, match="either frames"):
        node.propagate(model, decoded, objects, *args, video=VideoFromFile(str(path)))


def test_comfyui_manages_the_model(checkpoint, frames, objects) -> None:
    """Inside ComfyUI the network gets a ModelPatcher and is loaded through load_models_gpu before each use;
    ComfyUI moves it inside inference mode, and correction still differentiates through it."""
    loads = []

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    def load_models_gpu(patchers, force_full_load=False, **kw):
        loads.append(patchers)
        with torch.inference_mode():  # as ComfyUI moves weights: they become inference tensors
            for p in patchers:
                p.model.to(torch.float64).to(torch.float32)

    NODE_MODEL.clear_model_cache()
    with _fake_comfy() as fake:
        fake.mm.load_models_gpu, fake.mm.unet_offload_device = load_models_gpu, lambda: torch.device("cpu")
        fake.patcher_module.ModelPatcher = ModelPatcher
        with torch.inference_mode():
            (m,) = M["CycleVOSLoadModel"]().load(str(checkpoint), "cpu", "fp32")
            assert isinstance(m.patcher, ModelPatcher) and m.patcher.model is m.net and loads == []
            _, masks = M["CycleVOSPropagate"]().propagate(m, frames, objects, 5, 16, 64, True, 2, 2, 0.0)
    assert len(loads) == 1 and loads[0] == [m.patcher]
    assert not any(p.is_inference() for p in m.net.parameters())
    assert masks.ids.shape == (B, H, W)
    NODE_MODEL.clear_model_cache()


# ----------------------------------------------------------------------------- issue 28: inputs never silently wrong


def test_propagate_refuses_a_frame_with_a_nan_patch(model, frames, objects) -> None:
    bad = frames.clone()
    bad[3, 10:20, 10:20] = float("nan")
    with pytest.raises(_errors().InputError, match="NaN"):
        M["CycleVOSPropagate"]().propagate(model, bad, objects, 5, 16, 64, False, 5, 10, 0.0)


def test_load_model_keeps_names_inside_the_model_folders(checkpoint, tmp_path, monkeypatch) -> None:
    fp = types.ModuleType("folder_paths")  # inside ComfyUI, whose own lookup finds nothing
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {"cyclevos": ([], set())}
    fp.add_model_folder_path = lambda name, path: None
    fp.get_full_path = lambda folder, name: None
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    weights = Path(NODE_MODEL.PACK_ROOT) / "weights"
    for name in (str(checkpoint), "../" * (len(weights.parts) + 2) + str(checkpoint).lstrip("/")):
        with pytest.raises(_errors().InputError, match="not found"):
            NODE_MODEL.resolve_checkpoint(name)


def test_an_empty_mask_batch_is_an_input_error(frames) -> None:
    with pytest.raises(_errors().InputError, match="empty"):
        M["CycleVOSFirstFrameMask"]().make(0, 0.5, False, mask=torch.zeros(0, H, W))


def test_cycle_erf_refuses_a_mask_batch_of_the_wrong_length(model, frames) -> None:
    target = torch.from_numpy(_ids() == 1).float()[None].expand(3, H, W)  # 3 masks for 6 frames
    with pytest.raises(_errors().InputError, match="3 masks for 6 frames"):
        M["CycleVOSCycleERF"]().compute(model, frames, 2, target, 0, 2, 64)


def test_save_masks_refuses_a_too_long_prefix(model, frames, objects, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, masks = M["CycleVOSPropagate"]().propagate(model, frames[:2], objects, 5, 16, 64, False, 5, 10, 0.0)
    with pytest.raises(_errors().InputError, match="bytes"):
        M["CycleVOSSaveMasks"]().save("x" * 300, True, False, 12.0, masks=masks)
