"""Training searched cells from scratch: DARTS evaluation networks, presets, a resumable trainer.

CLI: `python -m proxynas_fast.train --arch NAME|genotype.json --dataset cifar10 --out runs/NAME`.
"""
from proxynas_fast.train.networks import (AuxiliaryHeadCIFAR, AuxiliaryHeadImageNet, NetworkCIFAR,
                                          NetworkImageNet, build_network, count_parameters, drop_path)

__all__ = ["AuxiliaryHeadCIFAR", "AuxiliaryHeadImageNet", "NetworkCIFAR", "NetworkImageNet",
           "build_network", "count_parameters", "drop_path"]
