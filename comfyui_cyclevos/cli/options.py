"""What the commands share: the engine and edge options (one vocabulary with the library's configs), the
engine setup, one-line errors, the progress bars of a run's phases, and the parsing of --mask and --remove."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import click

from ..config import ADAPT_DEFAULT_STEPS, AdaptConfig, CorrectionConfig, MemoryConfig
from ..errors import CycleVOSError


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
            "--adapt-batch",
            type=click.IntRange(min=1),
            default=AdaptConfig.batch,
            show_default=True,
            help="Clips of 3 frames per adaptation step; a step's time grows with it.",
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
    from ..config import InferenceConfig
    from ..model.checkpoint import checkpoint_meta, default_weights_path, load_checkpoint
    from ..runtime.device import pick_device
    from ..runtime.precision import pick_precision

    dev = pick_device(device)
    pick_precision(dev, precision)  # an unsupported precision fails here, before any work
    path = Path(weights) if weights else default_weights_path()
    net = load_checkpoint(path, dev)
    rate = checkpoint_meta(path).get("gc_rate")
    cfg = InferenceConfig.from_options(precision=precision, checkpoint_rate=rate, **options)
    return net, cfg, dev


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
