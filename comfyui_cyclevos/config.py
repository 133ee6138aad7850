"""Typed hyperparameters with the paper's names and defaults. A checkpoint carries its ModelConfig."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the STM-cycle network.

    encoder: ``lite0`` (default, EfficientNet-Lite0), ``resnet18`` or ``resnet50``.
    memory_encoder: ``fused`` reuses the frame's own encoder features and adds the masks through a small
      convolutional branch, so the memory key is the frame's query key (mask-independent) and only the
      value depends on the mask: one backbone pass per frame, and gradient correction only differentiates
      the small branch. ``stm`` is the original STM design: a second backbone fed frame + masks.
    second_mask: what the memory encoder's second mask channel holds: ``others`` (union of the other
      objects, as STM) or ``background`` (1 - mask, as the released STM-cycle code).
    """

    encoder: str = "lite0"
    memory_encoder: str = "fused"
    second_mask: str = "others"
    key_dim: int = 64
    value_dim: int = 128
    decoder_dims: tuple[int, int, int] = (128, 64, 32)  # at 1/16, 1/8, 1/4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        d = dict(d)
        if "decoder_dims" in d:
            d["decoder_dims"] = tuple(d["decoder_dims"])
        return cls(**d)


@dataclass
class CorrectionConfig:
    """Gradient correction, paper Eq. 5: on every ``every``-th frame (K), ``steps`` (N) gradient steps of rate
    ``rate`` (α) move the soft mask so that the network, remembering only that frame and its mask,
    reconstructs the reference mask; ``gamma`` (γ) weighs the soft-IoU term of the loss (Eq. 4).

    The loss is a per-pixel *mean*, so α is large. α is quoted at the paper's N = 10: each of N steps takes
    α · 10 / N (``correction.step_size``), so one rate keeps the same total correction at any N. The dev
    grid behind N = 4 and α = 150 is in docs/quality.md.
    """

    enabled: bool = True
    every: int = 5  # K
    steps: int = 4  # N
    rate: float = 150.0  # α
    gamma: float = 1.0  # γ
    # α for a box-shaped mask given on a later frame (paper Table 5): a box is far from the object, and only a
    # larger rate moves it toward the object (docs/quality.md), while ``rate`` is the better one for predictions.
    coarse_rate: float = 1500.0

    def __post_init__(self) -> None:
        _at_least(self, "every", 1)
        _at_least(self, "steps", 1)
        _finite(self, "rate", minimum=0.0)
        _finite(self, "gamma", minimum=0.0)
        _finite(self, "coarse_rate", minimum=0.0)


@dataclass
class MemoryConfig:
    """Memory schedule (paper §4.3): the first frame permanent, every ``every``-th frame (K) added, the previous
    frame temporary, at most ``capacity`` non-permanent entries (oldest dropped first), so time and memory
    per frame stay flat on long videos."""

    every: int = 5  # K
    capacity: int = 16
    use_first: bool = True
    use_previous: bool = True
    use_every_k: bool = True
    # Memorise each frame's label map (one-hot of the argmax, exactly the mask that is written) rather than its
    # soft probabilities (STM's choice): faint probabilities over the background, and the residue that
    # gradient correction leaves there, otherwise enter the memory values and pull later frames off the object.
    hard: bool = True

    def __post_init__(self) -> None:
        _at_least(self, "every", 1)
        _at_least(self, "capacity", 1)


@dataclass
class ConfidenceConfig:
    """Cycle confidence: how well frame t's written mask explains a reference mask through Eq. 2 (the
    network remembers only {X_t, Y_t} and predicts the reference frame back), as IoU in [0, 1].

    ``every`` 0 scores the correction schedule's frames (every ``CorrectionConfig.every``-th, with correction
    on or off); n scores every n-th frame. ``reference``: ``own`` each object's latest precise mask (what
    correction uses), ``recent`` the latest memorised frame and its written mask, ``both`` their mean."""

    enabled: bool = False
    every: int = 0
    reference: str = "both"

    def __post_init__(self) -> None:
        _at_least(self, "every", 0)
        if self.reference not in ("own", "recent", "both"):
            raise InputError(f"ConfidenceConfig.reference is {self.reference!r}: choose own, recent or both")


@dataclass
class GuardConfig:
    """When to keep the original network's masks after adaptation (``cycle/drift_guard.py``).

    Not the cycle score: adaptation maximises exactly that, so it rises also where adaptation drifts. The
    guard compares the tracks of the original and the adapted network on the same video: a frame-object
    pair *disagrees* when their IoU is below ``low_iou``; the original is kept when more than
    ``max_disagree`` of the pairs disagree or the median area ratio exceeds ``max_size_ratio``, unless the
    adapted track is the steadier one (its mean |log area change| per frame at most ``steadier`` times the
    original's: the original drifted and adaptation fixed it)."""

    enabled: bool = True
    low_iou: float = 0.5
    max_disagree: float = 0.10
    max_size_ratio: float = 2.0
    steadier: float = 0.8
    min_area: float = 16.0  # pixels: areas are floored here before their logs (empty frames)

    def __post_init__(self) -> None:
        _finite(self, "low_iou", minimum=0.0)
        _finite(self, "max_disagree", minimum=0.0)
        _finite(self, "max_size_ratio", minimum=1.0)
        _finite(self, "steadier", minimum=0.0)
        _finite(self, "min_area", minimum=1.0)


ADAPT_PARTS = ("decoder", "mask_encoder", "heads", "encoder_late")
ADAPT_DEFAULT_STEPS = 60  # the CLI's and the nodes' default; the library's InferenceConfig() stays unadapted


@dataclass
class AdaptConfig:
    """Test-time cyclic adaptation (``cycle/adaptation.py``): before a video is segmented, ``steps`` Adam steps
    of rate ``rate`` fine-tune a copy of the network with the cycle loss of Eq. 2-4 alone, on clips of
    ``batch`` triplets sampled from the video's own frames: a keyframe with its mask (every keyframe is a
    reference, forward or backward in time), t1 on that side (the steps' t1 spread evenly over it), t2 at most
    ``max_gap`` frames further; ``gamma`` (γ) as in Eq. 4. ``parts`` are the parts trained (the frozen
    encoder's features are computed once per frame); ``l2sp`` > 0 adds a penalty l2sp/2 · ||θ − θ₀||² toward
    the original weights. ``steps`` 0 turns adaptation off. ``seed`` makes it deterministic."""

    steps: int = 60
    rate: float = 1e-4
    batch: int = 2
    max_gap: int = 10
    flip: bool = True
    parts: tuple[str, ...] = ("decoder", "mask_encoder")
    l2sp: float = 0.0
    gamma: float = 1.0  # γ
    seed: int = 0
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        _at_least(self, "steps", 0)
        _finite(self, "rate", minimum=0.0)
        _at_least(self, "batch", 1)
        _at_least(self, "max_gap", 1)
        _finite(self, "l2sp", minimum=0.0)
        _finite(self, "gamma", minimum=0.0)
        self.parts = tuple(self.parts)
        unknown = sorted(set(self.parts) - set(ADAPT_PARTS))
        if unknown or not self.parts:
            raise InputError(f"AdaptConfig.parts {list(self.parts)}: choose one or more of {', '.join(ADAPT_PARTS)}")

    @property
    def enabled(self) -> bool:
        return self.steps > 0


@dataclass
class InferenceConfig:
    """Everything the engine needs besides the network."""

    size: int = 240  # processing short side, the paper's (0: the frame's own size)
    precision: str = "auto"  # auto|fp32|bf16|fp16, resolved once per engine by precision.pick_precision
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)
    adapt: AdaptConfig = field(default_factory=lambda: AdaptConfig(steps=0))

    @classmethod
    def from_options(
        cls,
        *,
        size: int = 240,
        precision: str = "auto",
        gc: bool = True,
        gc_every: int = CorrectionConfig.every,
        gc_steps: int = CorrectionConfig.steps,
        gc_rate: float | None = None,
        mem_every: int = MemoryConfig.every,
        mem_capacity: int = MemoryConfig.capacity,
        adapt_steps: int = ADAPT_DEFAULT_STEPS,
        adapt_rate: float = AdaptConfig.rate,
        adapt_batch: int = AdaptConfig.batch,
        adapt_guard: bool = True,
        checkpoint_rate: float | None = None,
    ) -> InferenceConfig:
        """The config from the flat options of the CLI and the nodes (one vocabulary: ``gc_*`` are the fields
        of ``CorrectionConfig``, ``mem_*`` those of ``MemoryConfig``, ``adapt_*`` those of ``AdaptConfig``). ``gc_rate`` None (or 0, a node's
        "default") takes ``checkpoint_rate``, the rate measured for the checkpoint, else the default α."""
        if not gc_rate:
            gc_rate = CorrectionConfig.rate if checkpoint_rate is None else float(checkpoint_rate)
        return cls(
            size=int(size),
            precision=precision,
            memory=MemoryConfig(every=int(mem_every), capacity=int(mem_capacity)),
            correction=CorrectionConfig(
                enabled=bool(gc), every=int(gc_every), steps=int(gc_steps), rate=float(gc_rate)
            ),
            adapt=AdaptConfig(
                steps=int(adapt_steps),
                rate=float(adapt_rate),
                batch=int(adapt_batch),
                guard=GuardConfig(enabled=bool(adapt_guard)),
            ),
        )

    def __post_init__(self) -> None:
        _at_least(self, "size", 0)
        if 0 < self.size < 16:
            raise InputError(
                f"size {self.size} is too small: give a processing short side of at least 16 (or 0: native)"
            )


@dataclass
class CycleERFConfig:
    """Cycle-ERF, paper Eq. 6: ``steps`` (M) gradient steps of rate ``rate`` (α) from an all-zero mask on the
    reference frame; ``gamma`` (γ) as in Eq. 4.

    ``smooth``: sigma in processing pixels of the Gaussian applied to the Eq. 6 result (0: none). The mask
    enters the network through stride-2 and stride-4 convolutions, whose gradient leaves a period-2/4
    checkerboard on the raw map; a small blur removes it without moving the map's mass (docs/quality.md)."""

    steps: int = 50  # M
    rate: float = 150.0  # α
    gamma: float = 1.0  # γ
    smooth: float = 1.5

    def __post_init__(self) -> None:
        _at_least(self, "steps", 1)
        _finite(self, "rate", minimum=0.0)
        _finite(self, "gamma", minimum=0.0)
        _finite(self, "smooth", minimum=0.0)


def _at_least(config, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{type(config).__name__}.{name} is {value!r}: give a whole number of at least {minimum}")


def _finite(config, name: str, *, minimum: float) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise InputError(f"{type(config).__name__}.{name} is {value!r}: give a finite number of at least {minimum:g}")
