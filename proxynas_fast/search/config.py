"""Search configuration: paper defaults, strategy defaults, presets and the command line.

A value is resolved in this order, later ones winning:
  1. the paper's first-order DARTS settings (`PAPER_DEFAULTS`),
  2. the strategy's own defaults where its paper differs (PC-DARTS: batch 256, lr 0.1, ...),
  3. the preset (`paper` adds nothing; `cpu-demo` shrinks the run to minutes on two CPU cores),
  4. flags given on the command line (or keys given to `resolve_config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from proxynas_fast.data import list_datasets  # numpy only: --help still answers without torch
from proxynas_fast import number_flags
from proxynas_fast.scorer_weights import scorer_weights_source, torchvision_resnet50_source
from proxynas_fast.selection.split import DEFAULT_SEED

from .errors import SearchError
from .strategies import get_strategy, list_strategies

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
        for name, limit, what in (("layers", number_flags.MAX_LAYERS, "cells"),
                                  ("init_channels", number_flags.MAX_INIT_CHANNELS, "channels"),
                                  ("batch_size", number_flags.MAX_BATCH_SIZE, "examples")):
            problem = number_flags.at_most(getattr(self, name), limit, what)
            if problem:
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


# ----- command line -----
def _as_flags(values: Mapping[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')} " + (" ".join(map(str, v)) if isinstance(v, tuple) else str(v))
                    for k, v in values.items())


def describe_presets() -> str:
    """What each non-empty preset sets, as flags (for --help)."""
    parts = []
    for name, spec in PRESETS.items():
        common = _as_flags({**spec.get("fixed", {}), **spec["common"]})
        if not common:
            continue
        extra = "; ".join(f"with --strategy {s}, also {_as_flags(d)}" for s, d in spec.items()
                          if s not in ("fixed", "common"))
        parts.append(f"{name} sets {common}" + (f" ({extra})" if extra else ""))
    return "; ".join(parts) + ". Flags given explicitly override the preset." if parts else ""


def _option_value(text: str):
    """KEY=VALUE values from --selection-option: JSON when it parses (numbers, true/false), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_option(text: str) -> Tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), _option_value(value)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help=f"one of {', '.join(list_datasets())}")
    g.add_argument("--data-dir", help="data folder (default: $PROXYNAS_DATA, else ./data)")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never download a missing data set")
    g.add_argument("--image-size", type=int, help="ImageNet crop size (default 224)")
    g.add_argument("--cutout", type=int, help="cutout length for the search batches (default 0: off)")
    g.add_argument("--loader-backend", help="ImageNet decoding: store (default: the proxy's images decoded once "
                                            "into an on-disk store at --store-size px, augmented in batches on the "
                                            "device), pil (the paper's loader: PIL decoding every epoch), dali "
                                            "(NVIDIA DALI), auto (DALI if installed, else pil)")
    g.add_argument("--loader-threads", type=int, help="ImageNet decoding threads (store build, DALI) or PIL "
                                                      "workers (default: the free cores; the paper's loader used 2)")
    g.add_argument("--store-size", type=int, help="side of the image store's stored squares in pixels (default "
                                                  "160; 256 keeps the paper's detail at 2.56x the disk)")


def _add_selection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("proxy selection")
    g.add_argument("--proxy", metavar="DIR",
                   help="search on the proxy chosen by `python -m proxynas_fast.select --out DIR` (its proxy.txt, "
                        "proxy_weights.txt and proxy_arch.txt), instead of selecting one here")
    g.add_argument("--entropy-file", help="per-example entropies: index<TAB>entropy<TAB>label")
    g.add_argument("--scorer-checkpoint",
                   help="score the training set with this scorer checkpoint first (imagenet: "
                        f"{torchvision_resnet50_source()})")
    g.add_argument("--scorer-arch", help="scorer network (default: the paper's for the data set)")
    g.add_argument("--selection", help="selection method (default p1; random needs no entropies)")
    g.add_argument("--portion", type=float, help="share of the training set to select (default 0.1)")
    g.add_argument("--count", type=int, help="number of examples to select instead of --portion")
    g.add_argument("--bin-width", type=float, help="histogram bin width over log10(entropy)")
    g.add_argument("--selection-option", dest="selection_options", type=_parse_option, action="append",
                   metavar="KEY=VALUE", help="extra option for the selection method (repeatable)")
    g.add_argument("--weight-fraction", type=float, help="share of the proxy set for the weights (0.5)")


def _paper_default(key: str) -> str:
    return f"default {PAPER_DEFAULTS[key]}"


def _add_search_flags(p: argparse.ArgumentParser) -> None:
    d = _paper_default
    g = p.add_argument_group("search", "defaults: the paper's (shown), then the strategy's, then the preset's")
    g.add_argument("--strategy", help=f"one of {', '.join(list_strategies())} (default darts)")
    g.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default paper). imagenet: the proxy-data "
                                    "paper's ImageNet search; pcdarts-imagenet: PC-DARTS's (docs/IMAGENET.md cites "
                                    f"each value). {describe_presets()}")
    g.add_argument("--epochs", type=int, help=d("epochs"))
    g.add_argument("--batch-size", type=int, help=f"batch size per process, {d('batch_size')} (PC-DARTS 256)")
    g.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float,
                   help=f"SGD learning rate of the weights, {d('learning_rate')} (PC-DARTS 0.1)")
    g.add_argument("--learning-rate-min", type=float, help=f"end of the cosine schedule, {d('learning_rate_min')}")
    g.add_argument("--momentum", type=float, help=d("momentum"))
    g.add_argument("--weight-decay", type=float, help=d("weight_decay"))
    g.add_argument("--arch-learning-rate", type=float, help=f"Adam on the alphas, {d('arch_learning_rate')} "
                                                            "(PC-DARTS 6e-4)")
    g.add_argument("--arch-betas", type=float, nargs=2, metavar=("BETA1", "BETA2"), help=d("arch_betas"))
    g.add_argument("--arch-weight-decay", type=float, help=d("arch_weight_decay"))
    g.add_argument("--arch-begin-epoch", type=int,
                   help="epochs of weight-only warm-up before architecture updates (default 0, PC-DARTS 15)")
    g.add_argument("--grad-clip", type=float, help=f"max norm of the weight gradients, {d('grad_clip')}")
    g.add_argument("--layers", type=int, help=f"cells in the supernet, {d('layers')}")
    g.add_argument("--init-channels", type=int, help=d("init_channels"))


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", help="output folder")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (starts fresh if it has none)")
    g.add_argument("--seed", type=int, help="seed of the selection, the split, the weights and the loaders "
                                            f"(default {DEFAULT_SEED}, as in select)")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels and seeded loaders (bitwise-reproducible on CPU)")
    g.add_argument("--backend", help="supernet cell implementation: reference or fused "
                                     "(default: fused when available)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="replay each first-order search step from a CUDA graph (one process on a GPU)")
    g.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--log-every", type=int, help="steps between step records in log.jsonl (default 50)")
    g.add_argument("--validate-every", type=int, help="epochs between validation passes; 0: after the last epoch "
                                                      "only (default 1; the imagenet presets 0)")
    g.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before the run ends with the resume "
                        "command, so a frozen rank cannot hang the job (default 1800)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm over the global batch instead of each rank's share (needs "
                        "--backend reference; docs/DISTRIBUTED.md says why it differs) (default off)")
    g.add_argument("--threads", type=int, help="intra-op CPU threads (default: the cores not busy with other "
                                               "jobs, from the load average, or $OMP_NUM_THREADS if set)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m proxynas_fast.search",
        description="Select a proxy set by entropy and run a differentiable architecture search on it. "
                    "Writes genotype.json, alphas.pt, cell drawings, the proxy index files, config.json and "
                    "log.jsonl to --out. Run under torchrun for several processes.",
        # unset flags stay out of the namespace, so presets and strategies can fill them
        argument_default=argparse.SUPPRESS,
    )
    _add_data_flags(p)
    _add_selection_flags(p)
    _add_search_flags(p)
    _add_run_flags(p)
    p.add_argument("--list-strategies", action="store_true", help="list the search strategies and exit")
    return p


def overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The flags the user actually gave, as config keys."""
    d = dict(vars(args))
    d.pop("list_strategies", None)
    d.pop("threads", None)  # how the run executes, not what it computes: applied before torch loads
    if "selection_options" in d:
        d["selection_options"] = dict(d["selection_options"])
    if "arch_betas" in d:
        d["arch_betas"] = tuple(d["arch_betas"])
    return d
