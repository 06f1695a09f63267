"""Cell genotypes: the search space's primitive names and a registry of known cells.

A genotype lists, for each of the 4 intermediate nodes of a cell, two (operation, input-node) pairs;
input node 0 is the cell before the previous one, 1 the previous cell, 2.. the intermediate nodes.
"""
from __future__ import annotations

import json
from collections import namedtuple
from importlib import resources
from pathlib import Path
from typing import Dict, List, Union

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# Order matters: index i of a MixedOp's `_ops` and column i of the alphas is PRIMITIVES[i].
PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


def genotype_from_dict(d: dict) -> Genotype:
    """Build a Genotype from its JSON form, checking operation names and input indices."""
    try:
        parts = {k: d[k] for k in Genotype._fields}
    except KeyError as e:
        raise ValueError(f"genotype is missing the field {e.args[0]!r}; expected {Genotype._fields}") from None
    for kind in ("normal", "reduce"):
        edges = [(str(op), int(j)) for op, j in parts[kind]]
        for i, (op, j) in enumerate(edges):
            if op not in PRIMITIVES and op not in ("sep_conv_7x7", "conv_7x1_1x7"):
                raise ValueError(f"genotype {kind} edge {i}: unknown operation {op!r}")
            node = i // 2 + 2
            if not 0 <= j < node:
                raise ValueError(f"genotype {kind} edge {i}: input {j} must be an earlier node (< {node})")
        parts[kind] = edges
        parts[kind + "_concat"] = [int(c) for c in parts[kind + "_concat"]]
    return Genotype(**parts)


def genotype_to_dict(g: Genotype) -> dict:
    return {
        "normal": [[op, int(j)] for op, j in g.normal],
        "normal_concat": [int(c) for c in g.normal_concat],
        "reduce": [[op, int(j)] for op, j in g.reduce],
        "reduce_concat": [int(c) for c in g.reduce_concat],
    }


def _load_registry() -> Dict[str, Genotype]:
    text = resources.files("proxynas_fast.darts").joinpath("data/genotypes.json").read_text()
    return {name: genotype_from_dict(d) for name, d in json.loads(text).items()}


_REGISTRY: Dict[str, Genotype] = _load_registry()


def list_genotypes() -> List[str]:
    """Names of the genotypes shipped with the package (DARTS, PC-DARTS and the proxy-data paper's cells)."""
    return sorted(_REGISTRY)


def get_genotype(name_or_path: Union[str, Path]) -> Genotype:
    """A registered genotype by name, or one read from a `genotype.json` file written by a search."""
    key = str(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key]
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"genotype file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if "genotype" in data and isinstance(data["genotype"], dict):
            data = data["genotype"]
        try:
            return genotype_from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    raise KeyError(f"unknown genotype {key!r}; known: {', '.join(list_genotypes())} (or pass a genotype.json path)")
