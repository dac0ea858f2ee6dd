"""Plots of a project's progress: the learning curve and the per-cycle histogram of S_i.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, safe in servers and threads) and saved atomically as PNG.

Inputs follow the workdir contract: ``cycles.jsonl`` holds one object per cycle with keys
``cycle, model_version, labeled, pseudo_images, pseudo_instances, map50 (or null), finished_at``;
``scores/<model_version>.jsonl`` holds the pool's :class:`~tsp_model.records.ImageScore` lines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tsp_model.atomic import atomic_save

__all__ = ["plot_learning_curve", "plot_score_histograms"]


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    atomic_save(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return out


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def plot_learning_curve(cycles: Sequence[Mapping[str, Any]], out_png: str | Path, title: str = "") -> Path:
    """Left: mAP50 on the held-out split against the labeled count, each point marked with its
    cycle; right: labeled and pseudo-labeled images per cycle. Cycles with ``map50`` null are
    drawn on the right only. Returns the PNG path.

    Raises:
        ValueError: ``cycles`` is empty or a cycle lacks ``labeled``.
    """
    if not cycles:
        raise ValueError("no cycles to plot (cycles.jsonl is empty)")
    rows = sorted(cycles, key=lambda c: int(c.get("cycle", 0)))
    for c in rows:
        if "labeled" not in c:
            raise ValueError(f"cycle {c.get('cycle', '?')}: missing 'labeled'")
    idx = [int(c.get("cycle", i)) for i, c in enumerate(rows)]
    labeled = [int(c["labeled"]) for c in rows]
    pseudo = [int(c.get("pseudo_images") or 0) for c in rows]

    fig = Figure(figsize=(10, 4))
    ax, ax2 = fig.subplots(1, 2)
    pts = [(n, float(c["map50"]), k) for n, c, k in zip(labeled, rows, idx, strict=True) if _finite(c.get("map50"))]
    if pts:
        xs, ys, ks = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", color="tab:blue")
        for x, y, k in pts:
            ax.annotate(f"c{k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_ylim(0, max(1.0, max(ys) * 1.05))
    else:
        ax.text(0.5, 0.5, "no mAP measured yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("mAP50 (held-out split)")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)

    x = np.arange(len(idx))
    ax2.bar(x - 0.2, labeled, width=0.4, label="labeled", color="tab:blue")
    ax2.bar(x + 0.2, pseudo, width=0.4, label="pseudo-labeled", color="tab:orange")
    ax2.set_xticks(x, [str(k) for k in idx])
    ax2.set_xlabel("cycle")
    ax2.set_ylabel("images")
    ax2.set_title("images per cycle")
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


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
