'''Search strategies: which supernet to build, how the architecture gradient is taken, and the defaults
each strategy's paper used where they differ from first-order DARTS.

    darts    DARTS, first-order architecture gradient (the proxy-data paper's main setting)
    darts2   DARTS, second-order (unrolled) architecture gradient
    pcdarts  PC-DARTS: partial-channel supernet with edge normalisation, first order, arch warm-up

A strategy is one decorated class that changes what its paper changes from first-order DARTS:

    @STRATEGIES.register()
    class WideDARTS(SearchStrategy):
        """DARTS with a larger batch"""   # the docstring's first line is the --list-strategies description
        name = "widedarts"
        defaults = MappingProxyType(dict(batch_size=128))

Its supernet classes come from `networks()`, which imports them when a model is built (see there).
'''
from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, List, Mapping, Tuple, Type

from ..registry import Registry, first_line
from .errors import SearchError

if TYPE_CHECKING:  # torch stays unloaded until a model is built (`--help` and the thread choice come first)
    import torch.nn as nn


class SearchStrategy:
    """First-order DARTS. The registry holds strategy classes; they keep no state, so their methods are
    classmethods and `get_strategy(name)` returns the class itself."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # unless a subclass sets it: the first line of its docstring
    unrolled: ClassVar[bool] = False  # second-order (unrolled) architecture gradient
    # Config fields whose defaults differ from first-order DARTS (applied before presets and CLI flags).
    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "description" not in cls.__dict__:
            cls.description = first_line(cls)

    @classmethod
    def networks(cls) -> Tuple[Type["nn.Module"], Type["nn.Module"]]:
        """The supernet classes: (for 32x32 data sets, for ImageNet)."""
        # Imported here to defer torch (proxynas_fast.darts loads it), not to break a cycle: darts never
        # imports the search package.
        from proxynas_fast import darts

        return darts.Network, darts.NetworkImageNetSearch

    @classmethod
    def network_class(cls, dataset: str) -> Type["nn.Module"]:
        small, imagenet = cls.networks()
        return imagenet if dataset == "imagenet" else small

    @classmethod
    def build_model(cls, *, dataset: str, C: int, num_classes: int, layers: int, criterion: nn.Module,
                    backend: str) -> nn.Module:
        net = cls.network_class(dataset)
        try:
            return net(C, num_classes, layers, criterion, backend=backend)
        except ValueError as e:  # e.g. PC-DARTS needs its partial-channel factor to divide the channels
            raise SearchError(f"--init-channels {C} / --layers {layers}: {net.__name__} cannot be built: {e}") from None


STRATEGIES: Registry[Type[SearchStrategy]] = Registry("search strategy", error=SearchError)


@STRATEGIES.register()
class DARTS(SearchStrategy):
    """DARTS, first-order architecture gradient"""

    name = "darts"


@STRATEGIES.register()
class DARTSSecondOrder(DARTS):
    """DARTS, second-order (unrolled) architecture gradient"""

    name = "darts2"
    unrolled = True


@STRATEGIES.register()
class PCDARTS(SearchStrategy):
    """PC-DARTS: partial channels + edge normalisation, first order, arch warm-up"""

    name = "pcdarts"
    # PC-DARTS train_search defaults: a larger batch and learning rates, and no architecture updates during
    # the first 15 epochs.
    defaults = MappingProxyType(dict(batch_size=256, learning_rate=0.1, arch_learning_rate=6e-4,
                                     arch_begin_epoch=15))

    @classmethod
    def networks(cls):
        from proxynas_fast import darts  # deferred like SearchStrategy.networks (torch), not a cycle

        return darts.PCNetwork, darts.PCNetworkImageNetSearch


def list_strategies() -> List[str]:
    """The strategy names, in registration order."""
    return STRATEGIES.names()


def get_strategy(name: str) -> Type[SearchStrategy]:
    """The strategy class registered under `name` (any case); an unknown name raises SearchError."""
    return STRATEGIES.get(name)
