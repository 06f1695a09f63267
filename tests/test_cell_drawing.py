"""Cell pictures are readable: every edge ends in a visible arrowhead, no operation label sits where two edges
cross, and the dashed edges into c_k are explained by a legend. Checked on the paper's searched cells."""
import json

import pytest
from matplotlib.patches import FancyArrowPatch

from proxynas_fast.search import outputs


@pytest.fixture(scope="module")
def genotypes(shared_dir):
    return json.loads((shared_dir / "reference" / "genotypes.json").read_text())


def _node_box(centre):
    pad = 0.04
    return centre[0], centre[1], outputs.NODE_HALF_W + pad, outputs.NODE_HALF_H + pad


def test_every_arrowhead_is_outside_the_boxes(genotypes):
    """Arrows used to end a fixed 17 points from the target's centre, inside the 23-point-wide box, so the
    boxes (drawn on top) hid the heads of the flatter edges from c_{k-2} and c_{k-1}."""
    for name, g in genotypes.items():
        for kind in ("normal", "reduce"):
            layout = outputs.cell_layout(g[kind], g[f"{kind}_concat"])
            pos = layout["positions"]
            assert len(layout["arrows"]) == len(g[kind]) + len(g[f"{kind}_concat"])
            for arrow in layout["arrows"]:
                for node, centre in pos.items():
                    for end in ("head", "tail"):
                        assert not outputs.box_contains(_node_box(centre), arrow[end]), (name, kind, arrow, node)
                # the head touches (just outside) its target box
                dx = abs(arrow["head"][0] - pos[arrow["dst"]][0]) - _node_box(pos[arrow["dst"]])[2]
                dy = abs(arrow["head"][1] - pos[arrow["dst"]][1]) - _node_box(pos[arrow["dst"]])[3]
                assert 0 <= max(dx, dy) < 0.1, (name, kind, arrow)


def test_no_label_sits_on_a_crossing_of_two_edges(genotypes):
    checked = 0
    for name, g in genotypes.items():
        for kind in ("normal", "reduce"):
            layout = outputs.cell_layout(g[kind], g[f"{kind}_concat"])
            assert len(layout["labels"]) == len(g[kind])
            for label in layout["labels"]:
                for point in layout["crossings"]:
                    assert not outputs.box_contains(label["box"], point), (name, kind, label, point)
            checked += len(layout["crossings"])
    assert checked > 20  # the cells do have crossings to avoid


def test_figure_has_one_arrow_per_edge_and_a_legend_for_dashed_edges(genotypes, tmp_path):
    g = genotypes["cifar10_DARTS_proxy_histo1_10p"]
    fig = outputs.cell_figure(g["reduce"], g["reduce_concat"], title="reduction cell")
    ax = fig.axes[0]
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == len(g["reduce"]) + len(g["reduce_concat"])
    assert sum(a.get_linestyle() == "--" for a in arrows) == len(g["reduce_concat"])
    legend = ax.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    assert any("concatenated into the output" in t for t in texts)
    assert [h.get_linestyle() for h in legend.legend_handles] == ["-", "--"]
    assert sorted(t.get_text() for t in ax.texts if "_" in t.get_text() and "$" not in t.get_text()) == \
        sorted(op for op, _ in g["reduce"])
    path = outputs.draw_cell(g["reduce"], g["reduce_concat"], tmp_path / "reduction.png", "reduction cell")
    assert path.stat().st_size > 10_000
