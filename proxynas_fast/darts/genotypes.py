"""Cell genotypes: the search space's primitive names and a registry of known cells.

A genotype lists, for each of the 4 intermediate nodes of a cell, two (operation, input-node) pairs;
input node 0 is the cell before the previous one, 1 the previous cell, 2.. the intermediate nodes.
"""
from __future__ import annotations

import ast
import json
from collections import namedtuple
from importlib import resources
from pathlib import Path
from typing import List, Union

from proxynas_fast.registry import Registry

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


def _concat_form(nodes) -> Union[range, List[int]]:
    """The concat as the reference's `genotype()` makes it: a `range` when the nodes are consecutive and
    ascending (always so for a searched cell), else a list. One form for one cell, so that a genotype read back
    from JSON or from its printed text equals (`==`) the one the search network printed."""
    nodes = [int(c) for c in nodes]
    if nodes and nodes == list(range(nodes[0], nodes[-1] + 1)):
        return range(nodes[0], nodes[-1] + 1)
    return nodes


# Operations a fixed (trained) cell may use besides the search space's: the reference network's extra ones.
EXTRA_OPERATIONS = ("sep_conv_7x7", "conv_7x1_1x7")
MAX_NODES = 32  # intermediate nodes per cell; the papers' cells have 4


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_edges(kind: str, edges) -> List[tuple]:
    """The (operation, input) pairs of a cell, or ValueError naming the field and the entry."""
    if not isinstance(edges, (list, tuple)):
        raise ValueError(f"genotype {kind}: must be a list of [operation, input] pairs, got {type(edges).__name__}")
    if not edges or len(edges) % 2 or len(edges) > 2 * MAX_NODES:
        raise ValueError(f"genotype {kind}: must hold two edges per node, an even number from 2 to "
                         f"{2 * MAX_NODES}, got {len(edges)}")
    checked = []
    for i, edge in enumerate(edges):
        if not isinstance(edge, (list, tuple)) or len(edge) != 2:
            raise ValueError(f"genotype {kind} edge {i}: must be an [operation, input] pair, got {edge!r}")
        op, j = edge
        if not isinstance(op, str) or (op not in PRIMITIVES and op not in EXTRA_OPERATIONS):
            raise ValueError(f"genotype {kind} edge {i}: unknown operation {op!r}; choose one of "
                             f"{', '.join(PRIMITIVES + list(EXTRA_OPERATIONS))}")
        node = i // 2 + 2
        if not _is_int(j) or not 0 <= j < node:
            raise ValueError(f"genotype {kind} edge {i}: input {j!r} must be an integer node before node {node} "
                             f"(0 to {node - 1})")
        checked.append((op, j))
    return checked


def _checked_concat(kind: str, concat, nodes: int) -> Union[range, List[int]]:
    field = f"{kind}_concat"
    if not isinstance(concat, (list, tuple, range)) or not concat:
        raise ValueError(f"genotype {field}: must be a non-empty list of node indices, got {concat!r}")
    for c in concat:
        if not _is_int(c) or not 0 <= c < nodes:
            raise ValueError(f"genotype {field}: {c!r} is not a node of the cell (an integer 0 to {nodes - 1})")
    return _concat_form(concat)


def genotype_from_dict(d: dict) -> Genotype:
    """Build a Genotype from its JSON form, checking everything a network needs to build it: the fields, two
    [operation, input] pairs per node with known operations and inputs from earlier nodes, and concat indices
    among the cell's nodes (integers, not strings or floats). ValueError names the field. A consecutive concat
    becomes a `range` (see `_concat_form`)."""
    if not isinstance(d, dict):
        raise ValueError(f"a genotype must be an object with the fields {Genotype._fields}, got {type(d).__name__}")
    try:
        parts = {k: d[k] for k in Genotype._fields}
    except KeyError as e:
        raise ValueError(f"genotype is missing the field {e.args[0]!r}; expected {Genotype._fields}") from None
    for kind in ("normal", "reduce"):
        parts[kind] = _checked_edges(kind, parts[kind])
        parts[kind + "_concat"] = _checked_concat(kind, parts[kind + "_concat"], len(parts[kind]) // 2 + 2)
    return Genotype(**parts)


def _printed_value(node: ast.expr, source: str):
    """A literal, or `range(a[, b])` of integer literals; nothing else is evaluated."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 2:
        return range(*(ast.literal_eval(a) for a in node.args))
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"{source}: {ast.unparse(node)!r} is neither a literal nor range(...)") from None


def genotype_from_string(text: str, source: str = "genotype") -> Genotype:
    """Parse a printed genotype, `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)`,
    as this package and the reference DARTS code print it (concat as `range(...)` or as a list; keyword or
    positional fields; `genotypes.Genotype(...)` too). Only literals and `range` are evaluated."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"{source}: not a printed genotype ({e.msg})") from None
    func = tree.func if isinstance(tree, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "Genotype":
        raise ValueError(f"{source}: expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
    if len(tree.args) > len(Genotype._fields):
        raise ValueError(f"{source}: Genotype takes {len(Genotype._fields)} fields, got {len(tree.args)}")
    fields = dict(zip(Genotype._fields, (_printed_value(a, source) for a in tree.args)))
    for kw in tree.keywords:
        if kw.arg not in Genotype._fields:
            raise ValueError(f"{source}: unknown Genotype field {kw.arg!r}; expected {Genotype._fields}")
        fields[kw.arg] = _printed_value(kw.value, source)
    try:
        return genotype_from_dict(fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from None


def genotype_to_dict(g: Genotype) -> dict:
    return {
        "normal": [[op, int(j)] for op, j in g.normal],
        "normal_concat": [int(c) for c in g.normal_concat],
        "reduce": [[op, int(j)] for op, j in g.reduce],
        "reduce_concat": [int(c) for c in g.reduce_concat],
    }


def _load_genotypes() -> Registry[Genotype]:
    text = resources.files("proxynas_fast.darts").joinpath("data/genotypes.json").read_text()
    registry: Registry[Genotype] = Registry("genotype", error=KeyError)
    for name, d in json.loads(text).items():
        registry.register(name, obj=genotype_from_dict(d))
    return registry


GENOTYPES: Registry[Genotype] = _load_genotypes()


def list_genotypes() -> List[str]:
    """Names of the genotypes shipped with the package (DARTS, PC-DARTS and the proxy-data paper's cells)."""
    return sorted(GENOTYPES.names())


def get_genotype(name_or_path: Union[str, Path]) -> Genotype:
    """A registered genotype by name, one read from a `genotype.json` file written by a search, or a printed
    genotype (`Genotype(normal=[...], ...)`, see `genotype_from_string`)."""
    key = str(name_or_path)
    if key in GENOTYPES:
        return GENOTYPES.get(key)
    if key.lstrip().startswith(("Genotype(", "genotypes.Genotype(")):
        return genotype_from_string(key)
    path = Path(key)
    if path.is_dir():  # a search's run folder: its genotype.json
        if not (path / "genotype.json").is_file():
            raise FileNotFoundError(f"{path} is a folder without a genotype.json; pass a genotype.json file or the "
                                    "run folder of a search (which holds genotype.json)")
        path = path / "genotype.json"
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
    raise KeyError(f"unknown genotype {key!r}; known: {', '.join(list_genotypes())} "
                   "(or pass a genotype.json path or a printed Genotype(...))")
