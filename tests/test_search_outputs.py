"""Search outputs and checkpoints: cell drawings, the JSON-lines log, atomic checkpoints and RNG round trips."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from proxynas_fast.darts import PCNetwork, get_genotype
from proxynas_fast.rng import capture_rng_state, restore_rng_state
from proxynas_fast.search import SearchError
from proxynas_fast.search import checkpoint as ckpt
from proxynas_fast.search import outputs


def test_cell_drawings_are_pngs_of_both_cells(tmp_path):
    genotype = get_genotype("PC_DARTS")
    paths = outputs.draw_genotype(tmp_path, genotype, title_prefix="PC_DARTS ")
    assert set(paths) == {"normal", "reduce"}
    sizes = []
    for path in paths.values():
        assert path.suffix == ".png" and path.is_file()
        with Image.open(path) as im:
            assert im.format == "PNG"
            sizes.append(im.size)
            pixels = np.asarray(im.convert("L"))
        assert im.size[0] > 300 and im.size[1] > 200
        assert pixels.std() > 10  # not a blank canvas
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_cell_drawings_are_redrawn_only_when_the_cell_changed(tmp_path, monkeypatch):
    """The search draws both cells after every epoch; a cell whose PNG already shows it (recorded in the PNG) is
    not drawn again. A changed cell, a changed title, and a PNG without the record (an older version's, or any
    other file) are."""
    pc, v2 = get_genotype("PC_DARTS"), get_genotype("DARTS_V2")
    outputs.draw_genotype(tmp_path, pc, title_prefix="a: ")
    drawn = []
    draw = outputs.draw_cell
    monkeypatch.setattr(outputs, "draw_cell", lambda edges, concat, path, title="": drawn.append(path.name)
                        or draw(edges, concat, path, title))
    outputs.draw_genotype(tmp_path, pc, title_prefix="a: ")
    assert drawn == []
    outputs.draw_genotype(tmp_path, pc._replace(reduce=v2.reduce), title_prefix="a: ")
    assert drawn == ["reduction.png"]
    outputs.draw_genotype(tmp_path, pc._replace(reduce=v2.reduce), title_prefix="b: ")
    assert drawn == ["reduction.png", "normal.png", "reduction.png"]
    Image.new("RGB", (8, 8)).save(tmp_path / "normal.png")  # a PNG that records nothing
    outputs.draw_genotype(tmp_path, pc._replace(reduce=v2.reduce), title_prefix="b: ")
    assert drawn[3:] == ["normal.png"]
    with Image.open(tmp_path / "normal.png") as im:
        assert im.size[0] > 300


def test_node_layout_keeps_edges_clear_of_other_nodes():
    # Inputs and intermediate nodes in convex position: no straight edge passes through a third node.
    pos = outputs._node_positions(4)
    names = ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3"]
    for a in names:
        for b in names:
            if a >= b:
                continue
            (x0, y0), (x1, y1) = pos[a], pos[b]
            for c in names:
                if c in (a, b):
                    continue
                px, py = pos[c]
                t = ((px - x0) * (x1 - x0) + (py - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2)
                if 0 < t < 1:
                    dist = abs((x1 - x0) * (y0 - py) - (x0 - px) * (y1 - y0)) / np.hypot(x1 - x0, y1 - y0)
                    assert dist > 0.3, (a, b, c)


def test_softmaxed_arch_and_alphas_file_for_pcdarts(tmp_path):
    torch.manual_seed(0)
    model = PCNetwork(4, 10, 3)
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_()
    soft = outputs.softmaxed_arch(model)
    assert set(soft) == {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"}
    np.testing.assert_allclose(np.asarray(soft["alphas_normal"]).sum(1), 1.0, rtol=1e-12)
    betas = np.asarray(soft["betas_reduce"])
    for start, size in ((0, 2), (2, 3), (5, 4), (9, 5)):  # each node's incoming edges sum to 1
        assert betas[start:start + size].sum() == pytest.approx(1.0)
    outputs.save_alphas(tmp_path, model)
    saved = torch.load(tmp_path / outputs.ALPHAS_NAME)
    assert saved["primitives"][0] == "none" and len(saved["primitives"]) == 8
    assert torch.equal(saved["arch"]["betas_normal"], model.betas_normal.detach())


def test_run_log_truncates_an_interrupted_epoch(tmp_path):
    log = outputs.RunLog(tmp_path / "log.jsonl")
    log.write("start", config={})
    for epoch in (1, 2):
        for step in (1, 2):
            log.write("step", epoch=epoch, step=step)
        log.write("epoch", epoch=epoch, val_acc=float("nan"))
    log.write("step", epoch=3, step=1)
    with open(log.path, "a") as f:
        f.write('{"event": "step", "epo')  # the line a SIGKILL cut
    log.truncate_to_epoch(2)
    records = outputs.read_log(log.path)
    assert [(r["event"], r.get("epoch")) for r in records] == [
        ("start", None), ("step", 1), ("step", 1), ("epoch", 1), ("step", 2), ("step", 2), ("epoch", 2)]
    log.truncate_to_epoch(1)
    assert [r.get("epoch") for r in outputs.read_log(log.path)][-1] == 1
    outputs.RunLog(tmp_path / "other.jsonl", enabled=False).write("start")
    assert not (tmp_path / "other.jsonl").exists()  # ranks other than 0 write nothing


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, {"epochs_done": 1, "w": torch.arange(3)})
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        with open(f, "wb") as handle:
            handle.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"epochs_done": 2})
    monkeypatch.setattr(torch, "save", real_save)
    state = ckpt.load_checkpoint(path)
    assert state["epochs_done"] == 1 and torch.equal(state["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.CHECKPOINT_NAME]

    (tmp_path / f".{ckpt.CHECKPOINT_NAME}.abc.pt").write_bytes(b"left by a kill")
    ckpt.remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.CHECKPOINT_NAME]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SearchError, match="bad.pt cannot be read"):
        ckpt.load_checkpoint(tmp_path / "bad.pt")


def test_rng_state_round_trip():
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_genotype_and_config_files_load_and_are_readable(tmp_path):
    genotype = get_genotype("DARTS_V2")
    path = outputs.write_genotype(tmp_path, genotype, dataset="cifar10", epochs_done=3)
    assert get_genotype(str(path)) == genotype
    assert json.loads(path.read_text())["epochs_done"] == 3
    config = outputs.write_config(tmp_path, {"seed": 2})
    umask = os.umask(0)
    os.umask(umask)
    for p in (path, config):  # ordinary permissions, not mkstemp's 0600
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
