"""The search's command line: `build_parser()` (its flags, grouped as in --help) and `overrides_from_args`
(the flags the user gave, as `SearchConfig` keys, for `config.resolve_config`). Parsing needs no torch, so
--help and flag mistakes answer at once.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Mapping, Tuple

from proxynas_fast.data import list_datasets  # numpy only: --help still answers without torch
from proxynas_fast.scorer_weights import torchvision_resnet50_source
from proxynas_fast.selection.split import DEFAULT_SEED

from .config import PAPER_DEFAULTS, PRESETS
from .strategies import list_strategies


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
