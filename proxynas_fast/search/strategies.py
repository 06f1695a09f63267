"""Search strategies: which supernet to build, how the architecture gradient is taken, and the defaults
each strategy's paper used where they differ from first-order DARTS.

    darts    DARTS, first-order architecture gradient (the proxy-data paper's main setting)
    darts2   DARTS, second-order (unrolled) architecture gradient
    pcdarts  PC-DARTS: partial-channel supernet with edge normalisation, first order, arch warm-up
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Dict, List, Mapping

from .errors import SearchError

if TYPE_CHECKING:  # torch stays unloaded until a model is built (`--help` and the thread choice come first)
    import torch.nn as nn


@dataclass(frozen=True)
class SearchStrategy:
    name: str
    description: str
    unrolled: bool  # second-order (unrolled) architecture gradient
    network: str  # class in proxynas_fast.darts for 32x32 data sets
    imagenet_network: str  # class in proxynas_fast.darts for ImageNet
    # Config fields whose defaults differ from first-order DARTS (applied before presets and CLI flags).
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def network_class(self, dataset: str):
        from proxynas_fast import darts

        name = self.imagenet_network if dataset == "imagenet" else self.network
        cls = getattr(darts, name, None)
        if cls is None:
            raise SearchError(f"strategy {self.name!r} needs proxynas_fast.darts.{name}, which this build lacks")
        return cls

    def build_model(self, *, dataset: str, C: int, num_classes: int, layers: int, criterion: nn.Module,
                    backend: str) -> nn.Module:
        cls = self.network_class(dataset)
        try:
            return cls(C, num_classes, layers, criterion, backend=backend)
        except ValueError as e:  # e.g. PC-DARTS needs its partial-channel factor to divide the channels
            raise SearchError(f"--init-channels {C} / --layers {layers}: {cls.__name__} cannot be built: {e}") from None


_STRATEGIES: Dict[str, SearchStrategy] = {
    s.name: s
    for s in (
        SearchStrategy("darts", "DARTS, first-order architecture gradient", unrolled=False,
                       network="Network", imagenet_network="NetworkImageNetSearch"),
        SearchStrategy("darts2", "DARTS, second-order (unrolled) architecture gradient", unrolled=True,
                       network="Network", imagenet_network="NetworkImageNetSearch"),
        SearchStrategy(
            "pcdarts", "PC-DARTS: partial channels + edge normalisation, first order, arch warm-up",
            unrolled=False, network="PCNetwork", imagenet_network="PCNetworkImageNetSearch",
            # PC-DARTS train_search defaults: a larger batch and learning rates, and no
            # architecture updates during the first 15 epochs.
            defaults=MappingProxyType(dict(batch_size=256, learning_rate=0.1,
                                           arch_learning_rate=6e-4, arch_begin_epoch=15)),
        ),
    )
}


def list_strategies() -> List[str]:
    return list(_STRATEGIES)


def get_strategy(name: str) -> SearchStrategy:
    try:
        return _STRATEGIES[str(name).lower()]
    except KeyError:
        raise SearchError(f"unknown search strategy {name!r}; choose one of {', '.join(_STRATEGIES)}") from None
