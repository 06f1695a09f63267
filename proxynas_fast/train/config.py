"""Training configuration and presets.

`paper` reproduces the DARTS evaluation settings (Liu et al., 2019), which the proxy-data paper
reuses unchanged; `cpu-demo` is a small configuration that trains in minutes on two CPU cores.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from proxynas_fast.data import list_datasets
from proxynas_fast import number_flags

# The data sets registered when this module loaded; the checks ask `list_datasets()` when they run.
DATASET_NAMES = tuple(list_datasets())
AMP_MODES = ("none", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "step")


@dataclass
class TrainConfig:
    arch: str
    dataset: str
    out: str
    data_dir: Optional[str] = None
    # network
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2  # final value; ramped linearly from 0 over the epochs (as in DARTS)
    # data
    cutout: int = 16
    train_limit: Optional[int] = None  # use only N training examples
    train_portion: Optional[float] = None  # or this fraction of them
    test_limit: Optional[int] = None
    subset: str = "random"  # how limits pick examples: "random" (seeded) or "first"
    # optimisation
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_schedule: str = "cosine"  # cosine to 0 over the epochs, or "step": lr * gamma^(epoch // step)
    lr_gamma: float = 0.97
    lr_step: int = 1
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    deterministic: bool = False
    eval_every: int = 1
    progress: bool = True
    loader_backend: str = "auto"  # ImageNet decoding backend passed to build_imagenet_loader
    skip_bad_images: bool = False  # ImageNet: drop unreadable files (logged) instead of failing
    extra: Dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        def bad(name, why):
            raise ValueError(f"--{name.replace('_', '-')}: {why}")

        if self.dataset not in list_datasets():
            bad("dataset", f"unknown data set {self.dataset!r}; choose one of {', '.join(list_datasets())}")
        if self.amp not in AMP_MODES:
            bad("amp", f"must be one of {AMP_MODES}, got {self.amp!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.subset not in ("random", "first"):
            bad("subset", f"must be 'random' or 'first', got {self.subset!r}")
        for name in ("init_channels", "layers", "epochs", "batch_size", "eval_every", "lr_step"):
            if getattr(self, name) < 1:
                bad(name, f"must be at least 1, got {getattr(self, name)}")
        if self.init_channels % 2:
            bad("init_channels", f"must be even (FactorizedReduce halves it), got {self.init_channels}")
        if self.layers < 3:
            bad("layers", f"must be at least 3 (two cells reduce), got {self.layers}")
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(name, f"must be a positive number of examples, got {v}")
        if self.train_portion is not None and not 0.0 < self.train_portion <= 1.0:
            bad("train_portion", f"must be in (0, 1], got {self.train_portion}")
        if not 0.0 <= self.drop_path_prob < 1.0:
            bad("drop_path_prob", f"must be in [0, 1), got {self.drop_path_prob}")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.cutout < 0:
            bad("cutout", f"must be >= 0, got {self.cutout}")
        if self.lr <= 0:
            bad("lr", f"must be positive, got {self.lr}")
        if self.batch_size == 1:
            bad("batch_size", "must be at least 2: BatchNorm needs more than one example per batch in training "
                              "(the auxiliary head normalises 1x1 maps), got 1")
        self._validate_numbers(bad)
        return self

    def _validate_numbers(self, bad) -> None:
        """Rates finite and positive, decays finite, momentum in [0, 1), the seed in range, sizes capped."""
        checks = [("lr", number_flags.positive), ("lr_gamma", number_flags.positive),
                  ("momentum", number_flags.unit_interval), ("weight_decay", number_flags.non_negative),
                  ("grad_clip", number_flags.non_negative), ("auxiliary_weight", number_flags.non_negative),
                  ("seed", number_flags.seed)]
        for name, check in checks:
            problem = check(getattr(self, name))
            if problem:
                bad(name, problem + (" (0 turns clipping off)" if name == "grad_clip" else ""))
        for name, problem in number_flags.size_problems(self):
            bad(name, problem)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# DARTS `train.py` (CIFAR-10) defaults; also used for CIFAR-100 and SVHN.
_PAPER_CIFAR = dict(
    init_channels=36, layers=20, auxiliary=True, auxiliary_weight=0.4, drop_path_prob=0.2, cutout=16,
    epochs=600, batch_size=96, lr=0.025, lr_schedule="cosine", momentum=0.9, weight_decay=3e-4,
    grad_clip=5.0, label_smoothing=0.0,
)

# DARTS `train_imagenet.py` defaults: lr decays by 0.97 every epoch; no cutout, no drop-path.
_PAPER_IMAGENET = dict(
    init_channels=48, layers=14, auxiliary=True, auxiliary_weight=0.4, drop_path_prob=0.0, cutout=0,
    epochs=250, batch_size=128, lr=0.1, lr_schedule="step", lr_gamma=0.97, lr_step=1, momentum=0.9,
    weight_decay=3e-5, grad_clip=5.0, label_smoothing=0.1,
)

# Small enough for a few minutes on two CPU cores, big enough to learn well above chance. (The earlier 16
# channels x 8 cells on 5000 images took 2.6 CPU-s per step: 7 minutes idle, over 20 on a busy machine.)
_CPU_DEMO = dict(
    init_channels=8, layers=5, auxiliary=True, drop_path_prob=0.0, cutout=0, epochs=3, batch_size=64,
    lr=0.08, train_limit=3000, test_limit=1000, channels_last=False, amp="none",
)

PRESETS = ("paper", "cpu-demo")
# Figures and how they were taken: docs/PERFORMANCE.md.
CPU_DEMO_TIME = "minutes on a 2-core CPU; docs/PERFORMANCE.md gives the wall times"


def describe_preset(preset: str) -> str:
    """What a preset sets beyond the paper's CIFAR settings, as flags (for --help)."""
    if preset != "cpu-demo":
        return f"{preset}: the DARTS evaluation settings"
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in _CPU_DEMO.items()
                     if _PAPER_CIFAR.get(k) != v and not isinstance(v, bool))
    return f"cpu-demo: {flags} ({CPU_DEMO_TIME})"


def preset_values(preset: str, dataset: str) -> Dict[str, Any]:
    """The field values a preset sets for a data set (everything else keeps TrainConfig's default)."""
    paper = dict(_PAPER_IMAGENET if dataset == "imagenet" else _PAPER_CIFAR)
    if preset == "paper":
        return paper
    if preset == "cpu-demo":
        return {**paper, **_CPU_DEMO}
    raise ValueError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def make_config(preset: str, arch: str, dataset: str, out: str, **overrides: Any) -> TrainConfig:
    """A preset's values for `dataset`, with every non-None override applied, validated."""
    values = preset_values(preset, dataset)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(arch=arch, dataset=dataset, out=out, **values).validate()
