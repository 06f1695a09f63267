"""Training searched cells from scratch: DARTS evaluation networks, presets, a resumable trainer.

CLI: `python -m proxynas_fast.train --arch NAME|genotype.json --dataset cifar10 --out runs/NAME`.

The network classes are loaded on first use (module `__getattr__`), so the CLI can parse its arguments, answer
`--help` and choose its threads before torch loads.
"""
from importlib import import_module

__all__ = ["AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "NetworkCIFAR", "NetworkImageNet",
           "build_network", "count_parameters", "drop_path"]


def __getattr__(name):
    if name in __all__:
        return getattr(import_module("proxynas_fast.train.networks"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
