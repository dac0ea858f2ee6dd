"""Plots of a project's progress: the learning curve and the per-cycle histogram of S_i.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, safe in servers and threads) and saved atomically as PNG.

Inputs follow the workdir contract: ``cycles.jsonl`` holds one object per cycle with keys
``cycle, model_version, labeled, pseudo_images, pseudo_instances, map50 (or null), finished_at``;
``scores/<model_version>.jsonl`` holds the pool's :class:`~tsp_model.core.records.ImageScore` lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tsp_model.core.atomic import atomic_save

__all__ = ["learning_curve_figure", "plot_learning_curve", "plot_score_histograms"]


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    atomic_save(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return out


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _cycle_labels(points: Sequence[tuple[float, float, int]]) -> list[tuple[float, float, str]]:
    """One label per distinct point: cycles that landed on the same (x, y), e.g. a rerun on the
    same labels, share one ("cycles 1, 3") instead of overprinting each other."""
    groups: dict[tuple[float, float], list[int]] = {}
    for x, y, k in points:
        groups.setdefault((x, round(y, 6)), []).append(k)
    return [(x, y, ("cycle " if len(ks) == 1 else "cycles ") + ", ".join(str(k) for k in ks))
            for (x, y), ks in groups.items()]


def plot_learning_curve(cycles: Sequence[Mapping[str, Any]], out_png: str | Path, title: str = "") -> Path:
    """Left: mAP50 on the held-out split against the labeled count, each point labeled with its
    cycle; right: labeled and pseudo-labeled images per cycle. Cycles with ``map50`` null are
    drawn on the right only. The labeled-count axis has whole-number ticks, at the counts when
    there are few. ``title``: the figure's heading (default: "Active learning: N cycles").
    Returns the PNG path.

    Raises:
        ValueError: ``cycles`` is empty or a cycle lacks ``labeled``.
    """
    return _save(learning_curve_figure(cycles, title), out_png)


def learning_curve_figure(cycles: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """The figure :func:`plot_learning_curve` saves (axes: curve, bars)."""
    from matplotlib.ticker import MaxNLocator

    if not cycles:
        raise ValueError("no cycles to plot (cycles.jsonl is empty)")
    rows = sorted(cycles, key=lambda c: int(c.get("cycle", 0)))
    for c in rows:
        if "labeled" not in c:
            raise ValueError(f"cycle {c.get('cycle', '?')}: missing 'labeled'")
    idx = [int(c.get("cycle", i)) for i, c in enumerate(rows)]
    labeled = [int(c["labeled"]) for c in rows]
    pseudo = [int(c.get("pseudo_images") or 0) for c in rows]

    fig = Figure(figsize=(10, 4.2))
    ax, ax2 = fig.subplots(1, 2)
    pts = [(n, float(c["map50"]), k) for n, c, k in zip(labeled, rows, idx, strict=True) if _finite(c.get("map50"))]
    if pts:
        xs, ys, _ = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", color="tab:blue")
        labels = _cycle_labels(pts)
        for x, y, text in labels:
            # above the point; below it when a higher point shares the labeled count (same x)
            below = any(ox == x and oy > y for ox, oy, _ in labels)
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, -15 if below else 9),
                        ha="center", fontsize=8)
        ax.set_ylim(0, max(1.0, max(ys) * 1.1))
    else:
        ax.text(0.5, 0.5, "no mAP measured yet", ha="center", va="center", transform=ax.transAxes)
    distinct = sorted(set(labeled))
    lo, hi = distinct[0], distinct[-1]
    pad = max(1.0, (hi - lo) * 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    if len(distinct) <= 8:
        ax.set_xticks(distinct)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("labeled images")
    ax.set_ylabel("mask AP50 (held-out split)")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)

    x = np.arange(len(idx))
    ax2.bar(x - 0.2, labeled, width=0.4, label="labeled", color="tab:blue")
    ax2.bar(x + 0.2, pseudo, width=0.4, label="pseudo-labeled", color="tab:orange")
    ax2.set_xticks(x, [str(k) for k in idx])
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_ylim(0, max(1, *labeled, *pseudo) * 1.25)  # headroom for the legend above the bars
    ax2.set_xlabel("cycle")
    ax2.set_ylabel("images")
    ax2.set_title("images per cycle")
    ax2.legend(loc="upper left", ncol=2, fontsize=9)
    n = len(rows)
    fig.suptitle(title or f"Active learning: {n} cycle{'s' if n != 1 else ''}")
    FigureCanvasAgg(fig)
    fig.tight_layout()
    return fig


def plot_score_histograms(
    per_cycle_scores: Mapping[str, Sequence[float]], out_png: str | Path, bins: int = 20, title: str = ""
) -> Path:
    """One histogram of image scores S_i per cycle (key: cycle or model_version label, in the
    mapping's order), stacked vertically with a shared S axis; the mean is marked. Returns the
    PNG path.

    Raises:
        ValueError: the mapping is empty.
    """
    if not per_cycle_scores:
        raise ValueError("no score files to plot")
    n = len(per_cycle_scores)
    all_s = [float(s) for v in per_cycle_scores.values() for s in v if _finite(float(s))]
    lo = min(0.0, min(all_s, default=0.0))
    hi = max(1.0, max(all_s, default=1.0))
    edges = np.linspace(lo, hi, bins + 1)
    fig = Figure(figsize=(7, 1.6 * n + 1))
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    for ax, (name, scores) in zip(axes, per_cycle_scores.items(), strict=True):
        s = np.array([float(v) for v in scores if _finite(float(v))])
        ax.hist(s, bins=edges, color="tab:purple", alpha=0.8)
        if s.size:
            ax.axvline(float(s.mean()), color="k", linestyle="--", linewidth=1)
        ax.set_ylabel("images")
        ax.set_title(f"{name}  (n={s.size}, mean S={s.mean():.3f})" if s.size else f"{name}  (no scores)",
                     fontsize=9)
    axes[-1].set_xlabel("image score S_i (low = uncertain, selected first)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)
