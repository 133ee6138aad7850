"""Typed hyperparameters with the paper's names and defaults. A checkpoint carries its ModelConfig."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


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
    """Gradient correction, paper Eq. 5: every K-th frame, N steps of rate alpha on the soft mask.

    The loss (Eq. 4) is a per-pixel *mean* cross-entropy plus gamma * (1 - soft IoU), so alpha is large.
    alpha is quoted at the paper's N = 10 steps; N steps take alpha * 10 / N each (``correction.step_size``),
    so one rate keeps the same total correction at any N. Dev J&F (fp32) is 70.0-70.3 above a cliff in
    alpha and about 68 below it; the cliff lies between 100 and 120 for N = 4 and 5 and between 120 and 135
    for N = 2 and 3. With bf16 convolutions N = 3 also falls at alpha 165-180 (68.3, 68.5) where N = 4
    holds (70.2). N = 4 costs 40 % of the paper's 10 steps with a margin on both sides of alpha = 150.
    """

    enabled: bool = True
    K: int = 5
    N: int = 4
    alpha: float = 150.0
    gamma: float = 1.0
    # Rate for a box-shaped mask given on a later frame (paper Table 5): a box is far from the object, and
    # on the dev sequences only a larger rate moved boxes toward it (mean IoU of 10 dev boxes: 0.306 as
    # given, 0.305 after correction at 150, 0.314 at 1500), while 150 is the better rate for predictions.
    coarse_alpha: float = 1500.0


@dataclass
class MemoryConfig:
    """Memory schedule: first frame permanent, every K-th frame added, the previous frame temporary,
    at most ``capacity`` non-permanent entries (oldest dropped first)."""

    K: int = 5
    capacity: int = 16
    use_first: bool = True
    use_previous: bool = True
    use_every_k: bool = True
    # Memorise each frame's label map (one-hot of the argmax, exactly the mask that is written) rather
    # than its soft probabilities (STM's choice). Faint probabilities over the background, and the
    # residue that gradient correction leaves there, otherwise enter the memory values and pull later
    # frames off the object. Dev J&F of the cyclic run at 3500 steps: 66.6 soft, 68.0 label maps.
    hard: bool = True


@dataclass
class ConfidenceConfig:
    """Cycle confidence: how well frame t's written mask explains a reference mask through Eq. 2 (the
    network remembers only {X_t, Y_t} and predicts the reference frame back), as IoU in [0, 1].

    ``every`` 0 scores the correction schedule's frames (every ``CorrectionConfig.K``-th, with correction
    on or off); n scores every n-th frame. ``reference``: ``own`` each object's latest precise mask (what
    correction uses), ``recent`` the latest memorised frame and its written mask, ``both`` their mean."""

    enabled: bool = False
    every: int = 0
    reference: str = "both"


@dataclass
class InferenceConfig:
    """Everything the engine needs besides the network."""

    size: int = 240  # processing short side, the paper's
    precision: str = "auto"  # auto|fp32|bf16|fp16, resolved once per engine by precision.pick_precision
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)


@dataclass
class CycleERFConfig:
    """Cycle-ERF, paper Eq. 6: M gradient steps from an all-zero mask on the reference frame.

    ``smooth``: sigma in processing pixels of the Gaussian applied to the Eq. 6 result (0: none). The
    mask enters the network through stride-2 and stride-4 convolutions, whose gradient leaves a period-2/4
    checkerboard on the raw map (on camel, 11 % and 3 % of the map's energy); sigma 1.5 removes it and
    keeps the in/out ratio (7.55 raw, 7.50 smoothed), where averaging over 16 input jitters costs 16x and
    lowers it to 6.57."""

    M: int = 50
    alpha: float = 150.0
    gamma: float = 1.0
    smooth: float = 1.5
