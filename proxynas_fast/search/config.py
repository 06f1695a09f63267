"""Search configuration: paper defaults, strategy defaults and presets (the command line: `cli_args.py`).

A value is resolved in this order, later ones winning:
  1. the paper's first-order DARTS settings (`PAPER_DEFAULTS`),
  2. the strategy's own defaults where its paper differs (PC-DARTS: batch 256, lr 0.1, ...),
  3. the preset (`paper` adds nothing; `cpu-demo` shrinks the run to minutes on two CPU cores),
  4. flags given on the command line (or keys given to `resolve_config`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from proxynas_fast.data import list_datasets  # numpy only: --help still answers without torch
from proxynas_fast import number_flags
from proxynas_fast.scorer_weights import scorer_weights_source
from proxynas_fast.selection.split import DEFAULT_SEED

from .errors import SearchError
from .strategies import get_strategy

# The data sets registered when this module loaded (a later `@register_dataset` class is accepted too: the
# checks ask `list_datasets()` at the time they run).
DATASET_NAMES = tuple(list_datasets())
# The cell implementations of `proxynas_fast.darts.model_search.BACKENDS`, named here so that parsing and checking a
# configuration (--help, mistakes) answers without importing torch; tests/test_search_config.py checks they agree.
BACKENDS = ("reference", "fused")
LOADER_BACKEND_NAMES = ("store", "pil", "dali", "auto")  # = loaders.imagenet.BACKENDS (tests/test_image_store.py)

# The proxy-data paper's search settings (those of DARTS, Liu et al. 2019, CIFAR-10).
PAPER_DEFAULTS: Dict[str, Any] = dict(
    epochs=50, batch_size=64, learning_rate=0.025, learning_rate_min=0.001, momentum=0.9, weight_decay=3e-4,
    arch_learning_rate=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, grad_clip=5.0, layers=8,
    init_channels=16, arch_begin_epoch=0, portion=0.1,
)

# Preset values: "fixed" (the data set and strategy a preset is for: filled in when not given, refused when
# given otherwise), "common" (all strategies), then per strategy. docs/IMAGENET.md cites the source file and
# line of every value of the two ImageNet presets.
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "paper": {"common": {}},
    # Real CIFAR-10, 1000 proxy images (500 per half), a small supernet, 3 epochs: a few minutes on 2 cores.
    "cpu-demo": {
        "common": dict(portion=0.02, init_channels=8, layers=5, batch_size=32, epochs=3, learning_rate=0.025,
                       learning_rate_min=0.001),
        "pcdarts": dict(arch_begin_epoch=1),
    },
    # The proxy-data paper's ImageNet search (its train_search_proxy_data_imagenet.py and script.sh): first-order
    # DARTS on a 10% P1 proxy split in halves, validation after the last epoch only.
    "imagenet": {
        "fixed": dict(dataset="imagenet", strategy="darts"),
        "common": dict(selection="p1", portion=0.1, weight_fraction=0.5, batch_size=64, learning_rate=0.025,
                       learning_rate_min=0.001, momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4,
                       arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_begin_epoch=0, grad_clip=5.0,
                       epochs=50, init_channels=16, layers=8, image_size=224, validate_every=0),
    },
    # PC-DARTS's ImageNet search (its train_search_imagenet.py): 10% of the images train the weights and 2.5%
    # the architecture (12.5%, 0.8 of it for the weights), architecture updates from epoch 35.
    "pcdarts-imagenet": {
        "fixed": dict(dataset="imagenet", strategy="pcdarts"),
        "common": dict(portion=0.125, weight_fraction=0.8, batch_size=1024, learning_rate=0.5,
                       learning_rate_min=0.0, momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-3,
                       arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_begin_epoch=35, grad_clip=5.0,
                       epochs=50, init_channels=16, layers=8, image_size=224, validate_every=0),
    },
}


def _bad(flag: str, why: str) -> None:
    raise SearchError(f"--{flag.replace('_', '-')}: {why}")


@dataclass
class SearchConfig:
    dataset: str
    out: str
    data_dir: Optional[str] = None
    download: bool = True
    # proxy selection
    proxy: Optional[str] = None  # a folder written by `python -m proxynas_fast.select` (resolved path): its split
    entropy_file: Optional[str] = None
    scorer_checkpoint: Optional[str] = None
    scorer_arch: Optional[str] = None  # default: the paper's scorer for the data set
    selection: Optional[str] = "p1"  # None with --proxy (the folder's selection is used)
    portion: Optional[float] = 0.1
    count: Optional[int] = None
    bin_width: Optional[float] = None  # default: the paper's width for the data set
    selection_options: Dict[str, Any] = field(default_factory=dict)
    weight_fraction: float = 0.5  # share of the proxy set that trains the weights; the rest trains alpha
    # search
    strategy: str = "darts"
    preset: str = "paper"
    epochs: int = 50
    batch_size: int = 64  # per process
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_learning_rate: float = 3e-4
    arch_betas: Tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_begin_epoch: int = 0  # epochs of weight-only training before alpha updates start
    grad_clip: float = 5.0
    layers: int = 8
    init_channels: int = 16
    image_size: Optional[int] = None  # ImageNet only (default 224)
    cutout: int = 0
    # run
    seed: int = DEFAULT_SEED  # shared with `select`
    deterministic: bool = False
    backend: Optional[str] = None  # None: `default_backend()`
    cuda_graphs: bool = False  # first-order steps replayed from CUDA graphs (one process, CUDA)
    device: str = "auto"
    loader_backend: str = "store"  # ImageNet decoding backend: store (decode once), pil (the paper's), dali, auto
    loader_threads: Optional[int] = None  # ImageNet decoding threads / workers; None: the free cores
    store_size: int = 160  # side of the image store's squares in pixels (the store backend)
    resume: bool = False
    tensorboard: bool = False
    progress: Optional[bool] = None  # None: on when stderr is a terminal
    log_every: int = 50  # steps between step records in log.jsonl
    validate_every: int = 1  # epochs between validation passes; 0: after the last epoch only
    # under torchrun: how long a collective waits for the other ranks (distributed.DEFAULT_TIMEOUT_S)
    dist_timeout: float = 1800.0
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (distributed.SyncBatchNorm)

    # ----- (de)serialisation -----
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arch_betas"] = list(self.arch_betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SearchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SearchError(f"unknown configuration key(s) {unknown}")
        values = dict(d)
        if "arch_betas" in values:
            values["arch_betas"] = tuple(float(b) for b in values["arch_betas"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    # ----- checks that need no data -----
    def validate(self) -> "SearchConfig":
        """SearchError naming the flag for the first option that cannot run (in the order of --help)."""
        self._validate_names()
        self._validate_selection()
        self._validate_schedule()
        self._validate_numbers()
        self._validate_run()
        return self

    def _validate_names(self) -> None:
        if self.dataset not in list_datasets():
            _bad("dataset", f"unknown data set {self.dataset!r}; choose one of {', '.join(list_datasets())}")
        get_strategy(self.strategy)
        if self.preset not in PRESETS:
            _bad("preset", f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")

    def _validate_selection(self) -> None:
        if self.entropy_file and self.scorer_checkpoint:
            raise SearchError("give either --entropy-file or --scorer-checkpoint, not both")
        if self.proxy is not None:
            self._validate_proxy()
        elif self.selection != "random" and not (self.entropy_file or self.scorer_checkpoint):
            raise SearchError(
                f"--selection {self.selection} ranks examples by entropy: pass --entropy-file FILE (lines "
                f"'index<TAB>entropy<TAB>label', e.g. from `python -m proxynas_fast.score`) or "
                f"--scorer-checkpoint CKPT to score the {self.dataset} training set first "
                f"({scorer_weights_source(self.dataset)}). Only --selection random needs neither.")
        if self.proxy is None and self.portion is not None and self.count is not None:
            raise SearchError(f"give either --portion ({self.portion}) or --count ({self.count}), not both")
        if self.proxy is None and self.portion is None and self.count is None:
            raise SearchError("give --portion (0 < p <= 1) or --count (number of proxy examples)")
        if self.portion is not None and not (math.isfinite(self.portion) and 0 < self.portion <= 1):
            _bad("portion", f"must be in (0, 1], got {self.portion}")
        if self.count is not None and self.count < 2:
            _bad("count", f"must be at least 2 (one example per half), got {self.count}")
        if self.bin_width is not None and not (math.isfinite(self.bin_width) and self.bin_width > 0):
            _bad("bin_width", f"must be a finite number > 0, got {self.bin_width}")
        if not 0 < self.weight_fraction < 1:
            _bad("weight_fraction", f"must be strictly between 0 and 1, got {self.weight_fraction}")

    def _validate_schedule(self) -> None:
        for name in ("epochs", "batch_size", "layers", "init_channels", "log_every"):
            if int(getattr(self, name)) < 1:
                _bad(name, f"must be at least 1, got {getattr(self, name)}")
        if self.init_channels % 2:
            _bad("init_channels", f"must be even (factorized reductions halve it), got {self.init_channels}")
        if self.arch_begin_epoch < 0:
            _bad("arch_begin_epoch", f"must be >= 0, got {self.arch_begin_epoch}")
        if not self.learning_rate > 0:
            _bad("learning_rate", f"must be > 0, got {self.learning_rate}")
        if not 0 <= self.learning_rate_min <= self.learning_rate:
            _bad("learning_rate_min", f"must be in [0, learning rate {self.learning_rate}], "
                                      f"got {self.learning_rate_min}")
        if not self.arch_learning_rate > 0:
            _bad("arch_learning_rate", f"must be > 0, got {self.arch_learning_rate}")
        if len(self.arch_betas) != 2 or not all(0 <= b < 1 for b in self.arch_betas):
            _bad("arch_betas", f"must be two numbers in [0, 1), got {self.arch_betas}")
        for name in ("momentum", "weight_decay", "arch_weight_decay", "cutout", "validate_every"):
            if getattr(self, name) < 0:
                _bad(name, f"must be >= 0, got {getattr(self, name)}")
        if not self.grad_clip > 0:
            _bad("grad_clip", f"must be > 0, got {self.grad_clip}")

    def _validate_numbers(self) -> None:
        """Rates finite and positive, decays finite, momentum in [0, 1), the seed in range, sizes capped."""
        checks = [(name, number_flags.positive) for name in ("learning_rate", "arch_learning_rate", "grad_clip")]
        checks += [(name, number_flags.non_negative) for name in ("learning_rate_min", "weight_decay",
                                                                  "arch_weight_decay")]
        checks += [("momentum", number_flags.unit_interval), ("seed", number_flags.seed)]
        for name, check in checks:
            problem = check(getattr(self, name))
            if problem:
                _bad(name, problem)
        # Adam's first steps are the rate over (1 - beta1) as a float32 scalar.
        adam_step = self.arch_learning_rate / (1 - self.arch_betas[0])
        if adam_step > number_flags.FLOAT32_MAX:
            _bad("arch_learning_rate", f"{self.arch_learning_rate:g} makes Adam's first step {adam_step:.3g}, beyond "
                                       f"float32's range (at most {number_flags.FLOAT32_MAX:.3g})")
        for name, problem in number_flags.size_problems(self):
            _bad(name, problem)

    def _validate_run(self) -> None:
        if self.image_size is not None:
            if self.dataset != "imagenet":
                _bad("image_size", f"only ImageNet images are resized; {self.dataset} is searched at its "
                                   "native 32x32")
            if self.image_size < 16:
                _bad("image_size", f"must be at least 16 (the ImageNet stem downsamples 8x), got {self.image_size}")
        if self.loader_threads is not None and self.loader_threads < 1:
            _bad("loader_threads", f"must be >= 1, got {self.loader_threads}")
        if self.store_size < 16:
            _bad("store_size", f"must be at least 16 pixels, got {self.store_size}")
        if self.loader_backend not in LOADER_BACKEND_NAMES:
            _bad("loader_backend", f"must be one of {', '.join(LOADER_BACKEND_NAMES)}, got {self.loader_backend!r}")
        if self.backend is not None and self.backend not in BACKENDS:
            _bad("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _bad("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not (math.isfinite(self.dist_timeout) and self.dist_timeout > 0):
            _bad("dist_timeout", f"must be a number of seconds > 0, got {self.dist_timeout}")
        if self.sync_bn and self.backend != "reference":
            _bad("sync_bn", "synchronises nn.BatchNorm2d modules, which only --backend reference runs (the fused "
                            "cells compute BatchNorm in their own kernels); add --backend reference")
        if self.cuda_graphs:
            if get_strategy(self.strategy).unrolled:
                _bad("cuda_graphs", f"captures first-order steps; strategy {self.strategy} is second order")
            if self.device == "cpu":
                _bad("cuda_graphs", "CUDA graphs need a CUDA device, not --device cpu")

    def _validate_proxy(self) -> None:
        """--proxy brings its selection and its weight/architecture split: nothing may select again."""
        given = [flag for flag, value in (("--entropy-file", self.entropy_file),
                                          ("--scorer-checkpoint", self.scorer_checkpoint),
                                          ("--selection", self.selection), ("--portion", self.portion),
                                          ("--count", self.count)) if value is not None]
        if given:
            raise SearchError(f"--proxy {self.proxy}: the folder's proxy files fix the selection and the split; "
                              f"drop {', '.join(given)}")


# Flags that choose or split a proxy; --proxy DIR replaces them all.
SELECTION_KEYS = ("entropy_file", "scorer_checkpoint", "scorer_arch", "selection", "portion", "count", "bin_width",
                  "selection_options", "weight_fraction")


def _resolve_proxy(values: Dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """With --proxy: refuse selection flags given with it, drop the selection defaults, store the resolved path."""
    proxy = values.get("proxy")
    if proxy is None:
        return
    clash = [f"--{k.replace('_', '-')}" for k in SELECTION_KEYS if k in overrides]
    if clash:
        raise SearchError(f"--proxy {proxy}: the folder's proxy files fix the selection and the split; "
                          f"drop {', '.join(clash)}")
    values.update(selection=None, portion=None, count=None)
    values["proxy"] = str(Path(proxy).expanduser().resolve())


def _preset_fixed(preset: str, overrides: Dict[str, Any]) -> None:
    """Fill in the data set and strategy a preset is for; refuse others given with it."""
    for key, value in PRESETS[preset].get("fixed", {}).items():
        given = overrides.setdefault(key, value)
        if str(given).lower() != value:
            others = [name for name, spec in PRESETS.items() if spec.get("fixed", {}).get(key) == given]
            raise SearchError(f"--preset {preset}: holds the settings of {key} {value}, not --{key} {given}"
                              + (f"; use --preset {others[0]}" if others else "; drop --preset or --" + key))


def resolve_config(overrides: Mapping[str, Any]) -> SearchConfig:
    """Layer paper defaults, strategy defaults, the preset and `overrides` (only keys the user set)."""
    overrides = dict(overrides)
    preset = overrides.get("preset", "paper")
    if preset not in PRESETS:
        raise SearchError(f"--preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    _preset_fixed(preset, overrides)
    strategy = get_strategy(overrides.get("strategy", "darts"))
    values: Dict[str, Any] = dict(PAPER_DEFAULTS)
    values.update(strategy.defaults)
    values.update(PRESETS[preset]["common"])
    values.update(PRESETS[preset].get(strategy.name, {}))
    if "count" in overrides and "portion" not in overrides:
        values["portion"] = None  # --count replaces the default portion
    values.update(overrides)
    _resolve_proxy(values, overrides)
    values["strategy"] = strategy.name
    values["preset"] = preset
    for key in ("dataset", "out"):
        if key not in values:
            raise SearchError(f"--{key} is required")
    return SearchConfig.from_dict(values).validate()


def default_backend(device=None) -> str:
    """The cell implementation a run on `device` uses when --backend is not given: 'fused' when the compiled
    kernels for that device type exist, else 'reference' (on a GPU without CUDA kernels the fused cell would run
    its pure-PyTorch references). One rule for the CLI and the models: `proxynas_fast.darts.default_backend`
    (`device=None`: torch's current default device)."""
    # Deferred: torch loads only when a run starts, so --help stays fast.
    from proxynas_fast.darts import default_backend as model_default

    return model_default(device)
