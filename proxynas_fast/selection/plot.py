"""PNG of the full set's log10-entropy histogram against the proxy's (matplotlib Agg, no global backend)."""
from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write


def _bar_positions(bins: list, width: float) -> tuple[np.ndarray, list]:
    """Left edge of each bar; the zero bin (no finite edges) is drawn one width left of the lowest bin."""
    finite_lows = [b["lower_log10"] for b in bins if b["lower_log10"] is not None]
    base = min(finite_lows) if finite_lows else 0.0
    lefts, ticks = [], []
    for b in bins:
        if b["lower_log10"] is None:
            lefts.append(base - 1.5 * width)
            ticks.append((base - width, "H=0"))
        else:
            lefts.append(b["lower_log10"])
    return np.asarray(lefts), ticks


def plot_selection_histogram(summary: dict, path, title: str | None = None) -> None:
    """Top: counts per bin, full set vs proxy (log scale). Bottom: share of each bin that was selected."""
    bins, width = summary["bins"], summary["bin_width"]
    lefts, zero_ticks = _bar_positions(bins, width)
    available = np.array([b["available"] for b in bins], dtype=float)
    selected = np.array([b["selected"] for b in bins], dtype=float)
    rate = np.array([b["rate"] for b in bins], dtype=float)

    fig = Figure(figsize=(8, 6), dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    top.bar(lefts, available, width=width, align="edge", color="0.75", edgecolor="0.45",
            label=f"full set ({summary['num_examples']})")
    top.bar(lefts, selected, width=width * 0.6, align="edge", color="tab:red", alpha=0.85,
            label=f"proxy ({summary['num_selected']})")
    top.set_yscale("log")
    top.set_ylabel("examples per bin")
    de = summary["data_entropy_nats"]
    top.legend(title=f"data entropy: proxy {de['selected']:.3f} / full {de['full']:.3f} nats",
               fontsize=8, title_fontsize=8, loc="upper left")
    top.set_title(title or "log10(entropy) histogram: full set vs proxy", fontsize=10)

    bottom.bar(lefts, 100 * rate, width=width, align="edge", color="tab:blue", edgecolor="navy")
    bottom.axhline(100 * summary["portion"], color="k", ls="--", lw=1,
                   label=f"overall {100 * summary['portion']:.1f}%")
    bottom.set_ylabel("% of bin selected")
    bottom.set_xlabel("log10(entropy in nats)")
    bottom.set_ylim(0, 105)
    bottom.legend(fontsize=8, loc="upper left")
    for x, text in zero_ticks:
        bottom.annotate(text, (x, 0), xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8)
    fig.tight_layout()

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
