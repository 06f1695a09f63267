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
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from proxynas_fast.atomic import atomic_torch_save, atomic_write, atomic_write_text
from proxynas_fast.darts.genotypes import PRIMITIVES, Genotype, genotype_to_dict

from .timing import PhaseTimes

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


NODE_HALF_W, NODE_HALF_H = 0.42, 0.3  # node box half-width, half-height (data units)
_BOX_PAD = 0.04  # the rounded box's pad around that rectangle
_ARROW_GAP = 0.05  # space between an arrowhead's tip and the box it points at


def _boundary_point(centre, towards, margin: float = _BOX_PAD + _ARROW_GAP) -> tuple:
    """Where the straight line from `centre` to `towards` leaves the node box around `centre` (plus margin)."""
    dx, dy = towards[0] - centre[0], towards[1] - centre[1]
    hw, hh = NODE_HALF_W + margin, NODE_HALF_H + margin
    t = min(hw / abs(dx) if dx else math.inf, hh / abs(dy) if dy else math.inf)
    return centre[0] + t * dx, centre[1] + t * dy


def _segment_hits_box(p0, p1, box) -> bool:
    """Does the segment p0-p1 pass through the axis-aligned box (cx, cy, half-w, half-h)? (Liang-Barsky)"""
    cx, cy, hw, hh = box
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    lo, hi = 0.0, 1.0
    for p, q in ((-dx, p0[0] - (cx - hw)), (dx, (cx + hw) - p0[0]), (-dy, p0[1] - (cy - hh)), (dy, (cy + hh) - p0[1])):
        if p == 0:
            if q < 0:
                return False
            continue
        t = q / p
        if p < 0:
            lo = max(lo, t)
        else:
            hi = min(hi, t)
        if lo > hi:
            return False
    return True


def _crossing_point(s0, s1):
    """Where segments s0 and s1 cross (not at an end), or None."""
    (ax, ay), (bx, by) = s0
    (cx, cy), (dx, dy) = s1
    den = (bx - ax) * (dy - cy) - (by - ay) * (dx - cx)
    if abs(den) < 1e-12:
        return None
    t = ((cx - ax) * (dy - cy) - (cy - ay) * (dx - cx)) / den
    u = ((cx - ax) * (by - ay) - (cy - ay) * (bx - ax)) / den
    if 1e-6 < t < 1 - 1e-6 and 1e-6 < u < 1 - 1e-6:
        return ax + t * (bx - ax), ay + t * (by - ay)
    return None


def edge_crossings(segments) -> List[tuple]:
    """Every point where two of the segments cross."""
    points = []
    for i in range(len(segments)):
        for j in range(i + 1, len(segments)):
            p = _crossing_point(segments[i], segments[j])
            if p is not None:
                points.append(p)
    return points


def box_contains(box, point) -> bool:
    return abs(point[0] - box[0]) <= box[2] and abs(point[1] - box[1]) <= box[3]


def label_box(text: str, centre) -> tuple:
    """The box (cx, cy, half-w, half-h) a 7-pt edge label takes, in data units."""
    return centre[0], centre[1], 0.06 * len(text) + 0.08, 0.17


def _place_label(segment, text, occupied, other_segments, crossings):
    """A point along `segment` for the label: off every crossing of two edges if possible, then through as few
    other edges as possible, then the least overlap with the `occupied` boxes (nodes, placed labels), then
    nearest the middle. The chosen box is added to `occupied`."""
    (x0, y0), (x1, y1) = segment
    best, best_cost = None, None
    for t in sorted((0.15 + 0.025 * i for i in range(29)), key=lambda t: abs(t - 0.5)):
        box = label_box(text, (x0 + t * (x1 - x0), y0 + t * (y1 - y0)))
        through = sum(_segment_hits_box(a, b, box) for a, b in other_segments)
        overlap = sum(max(0.0, box[2] + ow - abs(box[0] - ox)) * max(0.0, box[3] + oh - abs(box[1] - oy))
                      for ox, oy, ow, oh in occupied)
        on_crossing = sum(box_contains(box, p) for p in crossings)
        cost = (on_crossing, through, round(overlap, 6), abs(t - 0.5))
        if best_cost is None or cost < best_cost:
            best, best_cost = box, cost
    occupied.append(best)
    return best


def cell_layout(edges: Sequence, concat: Sequence[int]) -> Dict[str, Any]:
    """Geometry of a cell drawing, in data units: node centres, arrows (tail, head, style, label) running
    from box edge to box edge, and a box for each operation label, placed off the other edges where possible."""
    steps = len(edges) // 2
    pos = _node_positions(steps)
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
    links = [(names[int(j)], str(k // 2), "-", op) for k, (op, j) in enumerate(edges)]
    links += [(str(int(c) - 2), "c_{k}", "--", None) for c in concat]
    arrows = []
    for src, dst, style, op in links:
        tail = _boundary_point(pos[src], pos[dst])
        head = _boundary_point(pos[dst], pos[src])
        arrows.append({"src": src, "dst": dst, "tail": tail, "head": head, "style": style, "label": op})
    occupied = [(x, y, NODE_HALF_W + _BOX_PAD, NODE_HALF_H + _BOX_PAD) for x, y in pos.values()]
    labels = []
    crossings = edge_crossings([(a["tail"], a["head"]) for a in arrows])
    for i, arrow in enumerate(arrows):
        if arrow["label"] is None:
            continue
        others = [(a["tail"], a["head"]) for j, a in enumerate(arrows) if j != i]
        box = _place_label((pos[arrow["src"]], pos[arrow["dst"]]), arrow["label"], occupied, others, crossings)
        labels.append({"text": arrow["label"], "box": box, "arrow": i})
    return {"positions": pos, "arrows": arrows, "labels": labels, "crossings": crossings}


def _draw_nodes(ax, positions: Dict[str, tuple]) -> None:
    """A rounded box per node, coloured by kind (cell inputs, intermediate nodes, the output), with its name."""
    from matplotlib.patches import FancyBboxPatch  # deferred like cell_figure's: matplotlib only when drawing

    colours = {"in": "#b7e4a8", "mid": "#a8c8f0", "out": "#f5e08a"}
    for name, (x, y) in positions.items():
        kind = "in" if name.startswith("c_{k-") else ("out" if name == "c_{k}" else "mid")
        ax.add_patch(FancyBboxPatch((x - NODE_HALF_W, y - NODE_HALF_H), 2 * NODE_HALF_W, 2 * NODE_HALF_H,
                                    boxstyle=f"round,pad={_BOX_PAD}", fc=colours[kind], ec="#333333", lw=1.0,
                                    zorder=3))
        ax.text(x, y, f"${name}$" if name.startswith("c_") else name, ha="center", va="center", fontsize=10,
                zorder=4)


def cell_figure(edges: Sequence, concat: Sequence[int], title: str = ""):
    """The matplotlib Figure of a discrete cell: input nodes c_{k-2}, c_{k-1}, intermediate nodes 0..n-1, output
    c_{k}; every edge an arrow with its operation; the concatenated nodes feed c_{k} (dashed, with a legend)."""
    # Deferred: matplotlib loads only when a cell is drawn.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    layout = cell_layout(edges, concat)
    pos = layout["positions"]
    ys = [p[1] for p in pos.values()]
    fig = Figure(figsize=(7.0, 1.6 + 0.75 * (max(ys) - min(ys))), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_xlim(-0.7, 8.3)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    for arrow in layout["arrows"]:
        patch = FancyArrowPatch(arrow["tail"], arrow["head"], arrowstyle="-|>", mutation_scale=11, color="#444444",
                                lw=1.1, linestyle=arrow["style"], shrinkA=0, shrinkB=0, zorder=2)
        patch.set_gid(f"edge {arrow['src']}->{arrow['dst']}")
        ax.add_patch(patch)
    for label in layout["labels"]:
        x, y = label["box"][:2]
        ax.text(x, y, label["text"], ha="center", va="center", fontsize=7, zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="#bbbbbb", lw=0.5, alpha=0.95))
    _draw_nodes(ax, pos)
    ax.legend(handles=[Line2D([], [], color="#444444", lw=1.1, label="edge: the operation applied to its input"),
                       Line2D([], [], color="#444444", lw=1.1, ls="--",
                              label="node concatenated into the output $c_{k}$")],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _drawing_key(edges: Sequence, concat: Sequence[int], title: str) -> str:
    """What a cell drawing shows, stored in its PNG (text chunk "proxynas_fast cell")."""
    return json.dumps({"edges": [list(e) for e in edges], "concat": list(concat), "title": title})


def _shows(path: Path, key: str) -> bool:
    """Whether the PNG at `path` is a drawing of `key` (False when missing, unreadable or from an older version)."""
    if not path.is_file():
        return False
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.text.get("proxynas_fast cell") == key
    except (OSError, ValueError, SyntaxError):
        return False


def draw_cell(edges: Sequence, concat: Sequence[int], path, title: str = "") -> Path:
    """`cell_figure` written as a PNG (atomically), which records what it shows (see `draw_genotype`)."""
    fig = cell_figure(edges, concat, title)
    meta = {"proxynas_fast cell": _drawing_key(edges, concat, title)}
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight", metadata=meta))


def draw_genotype(out_dir, genotype: Genotype, title_prefix: str = "") -> Dict[str, Path]:
    """normal.png and reduction.png; a cell whose drawing already shows it is not drawn again (the search redraws
    after every epoch, and a cell changes in few of them, while a drawing (and the first matplotlib import) takes
    a noticeable share of a GPU search epoch)."""
    out = {}
    for kind, filename in CELL_DRAWINGS.items():
        edges = getattr(genotype, kind)
        concat = getattr(genotype, f"{kind}_concat")
        title = f"{title_prefix}{'normal' if kind == 'normal' else 'reduction'} cell"
        path = Path(out_dir) / filename
        out[kind] = path if _shows(path, _drawing_key(edges, concat, title)) else draw_cell(edges, concat, path, title)
    return out


def write_results(out_dir: Path, model, config, epochs_done: int, times: Optional[PhaseTimes] = None) -> Genotype:
    """genotype.json and alphas.pt of the search network `model` after `epochs_done` epochs of `config`, then the
    cell drawings (timed as outputs `genotype` and `graphs`)."""
    times = times or PhaseTimes()
    with times.phase("outputs", "genotype"):
        genotype = model.genotype()
        write_genotype(out_dir, genotype, dataset=config.dataset, strategy=config.strategy,
                       epochs_done=epochs_done, epochs=config.epochs, finished=epochs_done >= config.epochs)
        save_alphas(out_dir, model)
    with times.phase("outputs", "graphs"):
        draw_genotype(out_dir, genotype, title_prefix=f"{config.strategy} on {config.dataset}: ")
    return genotype
