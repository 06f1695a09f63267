"""`train --arch` checks a genotype before any work (issue 28): every genotype the network could not build is
refused with one line naming the field; a folder is read as a search run folder (its genotype.json)."""
from __future__ import annotations

import json

import pytest

from proxynas_fast.darts.genotypes import genotype_from_dict, genotype_to_dict, get_genotype, list_genotypes
from proxynas_fast.train.__main__ import main
from proxynas_fast.train.networks import build_network

GOOD = genotype_to_dict(get_genotype("DARTS_V2"))


def variant(**changes):
    d = json.loads(json.dumps(GOOD))
    d.update(changes)
    return d


def with_edge(kind, i, edge):
    d = json.loads(json.dumps(GOOD))
    d[kind][i] = edge
    return d


BAD = [
    ({k: v for k, v in GOOD.items() if k != "reduce_concat"}, "missing the field 'reduce_concat'"),
    (with_edge("normal", 0, ["conv_9x9", 0]), "genotype normal edge 0: unknown operation 'conv_9x9'"),
    (with_edge("reduce", 3, [7, 0]), "genotype reduce edge 3: unknown operation 7"),
    (with_edge("normal", 2, ["sep_conv_3x3", 3]), "genotype normal edge 2: input 3 must be an integer node before node 3"),
    (with_edge("normal", 2, ["sep_conv_3x3", -1]), "genotype normal edge 2: input -1 must be"),
    (with_edge("normal", 1, ["sep_conv_3x3", "1"]), "genotype normal edge 1: input '1' must be an integer"),
    (with_edge("normal", 1, ["sep_conv_3x3", 1.5]), "genotype normal edge 1: input 1.5 must be an integer"),
    (with_edge("normal", 1, ["sep_conv_3x3", True]), "genotype normal edge 1: input True must be an integer"),
    (with_edge("normal", 1, ["sep_conv_3x3"]), "genotype normal edge 1: must be an [operation, input] pair"),
    (variant(normal=GOOD["normal"][:7]), "genotype normal: must hold two edges per node, an even number from 2 to 64, got 7"),
    (variant(reduce=[]), "genotype reduce: must hold two edges per node"),
    (variant(reduce=GOOD["reduce"] * 9), "genotype reduce: must hold two edges per node, an even number from 2 to 64, got 72"),
    (variant(normal="sep_conv_3x3"), "genotype normal: must be a list of [operation, input] pairs, got str"),
    (variant(normal_concat=[2, 3, 4, 6]), "genotype normal_concat: 6 is not a node of the cell (an integer 0 to 5)"),
    (variant(reduce_concat=[]), "genotype reduce_concat: must be a non-empty list of node indices"),
    (variant(reduce_concat=["2", 3]), "genotype reduce_concat: '2' is not a node of the cell"),
    (variant(normal_concat=5), "genotype normal_concat: must be a non-empty list of node indices, got 5"),
]


@pytest.mark.parametrize("genotype,problem", BAD, ids=[p for _, p in BAD])
def test_train_refuses_a_genotype_the_network_cannot_build_before_the_data_loads(tmp_path, capsys, genotype,
                                                                                  problem):
    arch = tmp_path / "genotype.json"
    arch.write_text(json.dumps({"genotype": genotype}))
    out = tmp_path / "run"
    assert main(["--arch", str(arch), "--data-dir", str(tmp_path / "no-data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --arch: {arch}: ") and problem in err[-1], err
    assert not out.exists()


def test_every_genotype_accepted_builds_a_network():
    """The checks accept what the network builds: the registry, odd edge counts of nodes, inputs in the concat."""
    odd = variant(normal=GOOD["normal"][:4], normal_concat=[0, 2, 3])
    for g in [get_genotype(n) for n in list_genotypes()] + [genotype_from_dict(odd)]:
        build_network(g, "cifar10", 10, 8, 3, True)


def test_arch_folder_without_genotype_names_the_file_expected(tmp_path, capsys):
    assert main(["--arch", str(tmp_path), "--data-dir", str(tmp_path / "no-data"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: --arch: {tmp_path} is a folder without a genotype.json; pass a genotype.json file or "
                   "the run folder of a search (which holds genotype.json)")


def test_arch_search_run_folder_reads_its_genotype(tmp_path):
    (tmp_path / "genotype.json").write_text(json.dumps({"finished": True, "genotype": GOOD}))
    assert get_genotype(tmp_path) == get_genotype("DARTS_V2")
