"""DARTS / PC-DARTS search space, search networks and the architecture optimiser."""
from .architect import DARTS_CIFAR_SEARCH, Architect, SearchHyperparameters
from .genotypes import (
    PRIMITIVES,
    Genotype,
    genotype_from_dict,
    genotype_from_string,
    genotype_to_dict,
    get_genotype,
    list_genotypes,
)
from .model_search import BACKENDS, CELL_BACKENDS, Cell, MixedOp, Network, default_backend, parse_cell
from .model_search_imagenet import NetworkImageNetSearch, PCNetworkImageNetSearch
from .operations import OPS
from .pcdarts import (
    PCDARTS_CIFAR_K,
    PCDARTS_CIFAR_SEARCH,
    PCDARTS_IMAGENET_K,
    PCDARTS_IMAGENET_SEARCH,
    PCCell,
    PCMixedOp,
    PCNetwork,
    channel_shuffle,
    edge_normalization,
)

__all__ = [
    "PRIMITIVES", "Genotype", "OPS", "get_genotype", "list_genotypes", "genotype_from_dict", "genotype_from_string",
    "genotype_to_dict",
    "MixedOp", "Cell", "Network", "NetworkImageNetSearch", "parse_cell", "BACKENDS",
    "CELL_BACKENDS", "default_backend",
    "PCMixedOp", "PCCell", "PCNetwork", "PCNetworkImageNetSearch", "channel_shuffle", "edge_normalization",
    "Architect", "SearchHyperparameters", "DARTS_CIFAR_SEARCH", "PCDARTS_CIFAR_SEARCH", "PCDARTS_IMAGENET_SEARCH",
    "PCDARTS_CIFAR_K", "PCDARTS_IMAGENET_K",
]
