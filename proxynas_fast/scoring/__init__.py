"""Entropy scoring: pretrained scorer networks and the per-example softmax entropy of a data set.

`python -m proxynas_fast.scoring` (= `python -m proxynas_fast.score`) is the scoring CLI and
`python -m proxynas_fast.scoring.train_scorer` (= `python -m proxynas_fast.train_scorer`) the scorer-training one.
The names below load on first use (PEP 562): running a CLI runs this file first, and the CLIs check their
dependencies and answer --help before torch loads.
"""
from typing import Any

__all__ = ["ScoreResult", "score_dataset", "score_examples", "CheckpointError", "create_scorer", "list_scorers",
           "load_scorer", "read_state_dict", "CifarResNet", "ImageNetResNet", "resnet20", "resnet32", "resnet44",
           "resnet56", "resnet110", "resnet18", "resnet50"]
_ENTROPY = {"ScoreResult", "score_dataset", "score_examples"}
_MODELS = {"CheckpointError", "create_scorer", "list_scorers", "load_scorer", "read_state_dict"}
_RESNET_CIFAR = {"CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
_RESNET_IMAGENET = {"ImageNetResNet", "resnet18", "resnet50"}


def __getattr__(name: str) -> Any:
    if name in _ENTROPY:
        from . import entropy as module
    elif name in _MODELS:
        from . import models as module
    elif name in _RESNET_CIFAR:
        from . import resnet_cifar as module
    elif name in _RESNET_IMAGENET:
        from . import resnet_imagenet as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
