"""What a search writes to its output folder.

    config.json      the resolved configuration
    log.jsonl        one JSON record per line: start, step, epoch (losses, accuracies, softmaxed alphas,
                     genotype), resume and end events
    genotype.json    the final cell (loadable with proxynas_fast.darts.genotypes.get_genotype)
    alphas.pt        the raw architecture weights and their softmax, with the primitive names
    normal.png, reduction.png   drawings of the two cells
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

from proxynas_fast.atomic import atomic_torch_save, atomic_write, atomic_write_text
from proxynas_fast.darts.genotypes import PRIMITIVES, Genotype, genotype_to_dict

LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
GENOTYPE_NAME = "genotype.json"
ALPHAS_NAME = "alphas.pt"
CELL_DRAWINGS = {"normal": "normal.png", "reduce": "reduction.png"}


# ----- architecture weights -----
def arch_state(model) -> Dict[str, torch.Tensor]:
    """The architecture weights by name (alphas_normal, alphas_reduce, PC-DARTS betas_*), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.arch_state().items()}


def softmaxed_arch(model) -> Dict[str, List]:
    """Softmaxed architecture weights: alphas per edge over the primitives; PC-DARTS betas per node over its
    incoming edges (the edge normalisation the network applies)."""
    from proxynas_fast.darts import edge_normalization

    out = {}
    for name, value in arch_state(model).items():
        value = value.double()
        if name.startswith("betas"):
            out[name] = edge_normalization(value, model._steps).tolist()
        else:
            out[name] = F.softmax(value, dim=-1).tolist()
    return out


def save_alphas(out_dir, model) -> Path:
    raw = arch_state(model)
    payload = {"primitives": list(PRIMITIVES), "arch": raw, "softmax": softmaxed_arch(model)}
    return atomic_torch_save(payload, Path(out_dir) / ALPHAS_NAME)


def write_genotype(out_dir, genotype: Genotype, **meta) -> Path:
    path = Path(out_dir) / GENOTYPE_NAME
    atomic_write_text(path, json.dumps(dict(meta, genotype=genotype_to_dict(genotype)), indent=1) + "\n")
    return path


def write_config(out_dir, config_dict: Dict[str, Any]) -> Path:
    path = Path(out_dir) / CONFIG_NAME
    atomic_write_text(path, json.dumps(config_dict, indent=1, sort_keys=True) + "\n")
    return path


# ----- JSON-lines log -----
class RunLog:
    """Appends one JSON object per line, flushed at once so a killed run keeps what it logged."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        line = json.dumps(dict(event=event, **fields), allow_nan=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def truncate_to_epoch(self, epochs_done: int) -> None:
        """On resume: drop what the interrupted epoch logged, so the log reads like an uninterrupted run."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if rec.get("event") in ("step", "epoch") and rec.get("epoch", 0) > epochs_done:
                continue
            if rec.get("event") == "end":
                continue
            kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))


def read_log(path) -> List[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class TensorBoardLogger:
    """Scalars to TensorBoard when asked for and `tensorboard` is installed; otherwise a warning and no-op."""

    def __init__(self, log_dir, enabled: bool):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            warnings.warn(f"--tensorboard: TensorBoard is not installed ({e}); logging to log.jsonl only. "
                          "`pip install tensorboard` to enable it.", RuntimeWarning, stacklevel=2)
            return
        self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, **values: float) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----- cell drawings -----
def _node_positions(steps: int) -> Dict[str, tuple]:
    """Inputs on the left, intermediate nodes on an arc bulging right, output further right. The inputs and
    intermediates lie in convex position, so no straight edge between two of them passes through a third."""
    pos = {"c_{k-2}": (0.0, 1.3), "c_{k-1}": (0.0, -1.3)}
    top = 0.9 * steps
    for i in range(steps):
        frac = i / (steps - 1) if steps > 1 else 0.5
        pos[str(i)] = (3.2 + 1.6 * math.sin(math.pi * frac), top - 2 * top * frac)
    pos["c_{k}"] = (7.6, 0.0)
    return pos


def _place_label(p0, p1, text, occupied):
    """A point along p0->p1 for the label that overlaps least with `occupied` boxes (cx, cy, half-w, half-h)."""
    hw, hh = 0.06 * len(text) + 0.08, 0.17
    best, best_cost = None, None
    for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.25, 0.75):
        cx, cy = p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1])
        cost = abs(t - 0.5) * 0.01
        for ox, oy, ow, oh in occupied:
            cost += max(0.0, hw + ow - abs(cx - ox)) * max(0.0, hh + oh - abs(cy - oy))
        if best_cost is None or cost < best_cost:
            best, best_cost = (cx, cy, hw, hh), cost
    occupied.append(best)
    return best[0], best[1]


def draw_cell(edges: Sequence, concat: Sequence[int], path, title: str = "") -> Path:
    """Draw a discrete cell: input nodes c_{k-2}, c_{k-1}, intermediate nodes 0..n-1, output c_{k}; every edge
    labelled with its operation; the concatenated nodes feed c_{k} (dashed). PNG via matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    steps = len(edges) // 2
    pos = _node_positions(steps)
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
    colours = {"in": "#b7e4a8", "mid": "#a8c8f0", "out": "#f5e08a"}
    hw, hh = 0.42, 0.3  # node box half-width, half-height (data units)

    ys = [p[1] for p in pos.values()]
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.75 * (max(ys) - min(ys))), dpi=110)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(-0.7, 8.3)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    occupied = [(x, y, hw, hh) for x, y in pos.values()]

    def arrow(src, dst, style="-"):
        ax.annotate("", xy=pos[dst], xytext=pos[src],
                    arrowprops=dict(arrowstyle="-|>", color="#444444", lw=1.1, linestyle=style,
                                    shrinkA=17, shrinkB=17))

    for k, (op, j) in enumerate(edges):
        src, dst = names[int(j)], str(k // 2)
        arrow(src, dst)
        x, y = _place_label(pos[src], pos[dst], op, occupied)
        ax.text(x, y, op, ha="center", va="center", fontsize=7, zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="#bbbbbb", lw=0.5, alpha=0.95))
    for c in concat:
        arrow(str(int(c) - 2), "c_{k}", "--")

    for name, (x, y) in pos.items():
        kind = "in" if name.startswith("c_{k-") else ("out" if name == "c_{k}" else "mid")
        ax.add_patch(FancyBboxPatch((x - hw, y - hh), 2 * hw, 2 * hh, boxstyle="round,pad=0.04",
                                    fc=colours[kind], ec="#333333", lw=1.0, zorder=3))
        ax.text(x, y, f"${name}$" if name.startswith("c_") else name, ha="center", va="center", fontsize=10,
                zorder=4)
    if title:
        ax.set_title(title, fontsize=10)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def draw_genotype(out_dir, genotype: Genotype, title_prefix: str = "") -> Dict[str, Path]:
    out = {}
    for kind, filename in CELL_DRAWINGS.items():
        edges = getattr(genotype, kind)
        concat = getattr(genotype, f"{kind}_concat")
        title = f"{title_prefix}{'normal' if kind == 'normal' else 'reduction'} cell"
        out[kind] = draw_cell(edges, concat, Path(out_dir) / filename, title)
    return out
