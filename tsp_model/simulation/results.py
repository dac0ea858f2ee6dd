"""Results of a replay: per-arm summaries, paired per-seed differences, the labels each arm needs
to reach a fraction of full supervision, a table and a Figure-2-style plot."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CEILING_FRACTION",
    "FULL",
    "format_table",
    "labels_to_fraction_of_full",
    "paired_differences",
    "plot",
    "summarize",
]

FULL = "full"
CEILING_FRACTION = 0.95


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per arm and cycle: mean and population std over seeds of each metric."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["cycle"]), []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for (arm, cycle), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        entry: dict[str, Any] = {"cycle": cycle, "labeled": rs[0]["labeled"], "seeds": len(rs)}
        for key in ("segm_ap50", "bbox_ap50"):
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std([r[key] for r in rs])
        entry["pseudo_instances_mean"] = statistics.fmean(r["pseudo_instances"] for r in rs)
        entry["labeled_instances_mean"] = statistics.fmean(r["labeled_instances"] for r in rs)
        entry["labeled_empty_images_mean"] = statistics.fmean(r["labeled_empty_images"] for r in rs)
        groups_covered = [r["labeled_groups"] for r in rs if r.get("labeled_groups") is not None]
        entry["labeled_groups_mean"] = statistics.fmean(groups_covered) if groups_covered else None
        prec = [r["pseudo_precision"] for r in rs if r["pseudo_precision"] is not None]
        entry["pseudo_precision_mean"] = statistics.fmean(prec) if prec else None
        extra = {}
        for name in rs[0].get("extra_tests", {}):
            extra[name] = {f"{key}_mean": _mean_std([r["extra_tests"][name][key] for r in rs])[0]
                           for key in ("segm_ap50", "bbox_ap50")}
        entry["extra_tests"] = extra
        out.setdefault(arm, []).append(entry)
    return out


def paired_differences(rows: list[dict[str, Any]], baseline: str, metric: str = "segm_ap50") -> dict[str, Any]:
    """Per arm and cycle: ``arm - baseline`` on the same seed (same test set, same cycle-1 model),
    with the per-seed values, their mean, population std, min and max."""
    by = {(r["arm"], r["seed"], r["cycle"]): r[metric] for r in rows if r["arm"] != FULL}
    arms = sorted({r["arm"] for r in rows if r["arm"] not in (FULL, baseline)})
    out: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        cycles = sorted({c for (a, _, c) in by if a == arm})
        for c in cycles:
            diffs = {s: by[(arm, s, c)] - by[(baseline, s, c)] for (a, s, cc) in by
                     if a == arm and cc == c and (baseline, s, c) in by}
            if not diffs:
                continue
            vals = list(diffs.values())
            mean, std = _mean_std(vals)
            out.setdefault(arm, []).append({
                "cycle": c, "per_seed": {str(s): v for s, v in sorted(diffs.items())}, "mean": mean, "std": std,
                "min": min(vals), "max": max(vals), "wins": sum(v > 0 for v in vals), "seeds": len(vals),
            })
    return {"baseline": baseline, "metric": metric, "arms": out}


def labels_to_fraction_of_full(summary: dict[str, list[dict[str, Any]]], fraction: float) -> dict[str, Any]:
    """Fewest labeled images at which each arm's mean mask mAP@0.5 reaches ``fraction`` x the
    ceiling's (None: not reached within the run)."""
    if FULL not in summary:
        return {"fraction": fraction, "full_segm_ap50": None, "target": None, "arms": {}}
    full = summary[FULL][0]
    target = fraction * full["segm_ap50_mean"]
    arms = {}
    for arm, entries in summary.items():
        if arm == FULL:
            continue
        hit = [e["labeled"] for e in entries if e["segm_ap50_mean"] >= target and target > 0]
        arms[arm] = min(hit) if hit else None
    return {"fraction": fraction, "full_labeled": full["labeled"], "full_segm_ap50": full["segm_ap50_mean"],
            "target": target, "arms": arms}


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(doc: dict[str, Any]) -> str:
    """One row per arm and cycle (labeled, lesions/empty slices labeled, groups covered, mask and
    box mAP@0.5 mean ± std, paired difference to the baseline, pseudo labels); then the labels
    each arm needs to reach 95% of full supervision."""
    paired = {(a, e["cycle"]): e for a, es in doc["paired"]["arms"].items() for e in es}
    base = doc["paired"]["baseline"]
    head = (f"{'arm':<26} {'cycle':>5} {'labeled':>7} {'inst/empty':>10} {'groups':>6}  {'mAP50 mask':>15}  "
            f"{'mAP50 box':>15}  {'- ' + base + ' (per seed)':>30}  {'pseudo':>7} {'prec':>5}")
    lines = [head, "-" * len(head)]
    for arm in doc["arms"]:
        for e in doc["summary"].get(arm, []):
            cyc = "ceil" if arm == FULL else str(e["cycle"])
            ie = f"{e['labeled_instances_mean']:.0f}/{e['labeled_empty_images_mean']:.0f}"
            groups = "-" if e.get("labeled_groups_mean") is None else f"{e['labeled_groups_mean']:.1f}"
            p = paired.get((arm, e["cycle"]))
            diff = "" if p is None else (f"{p['mean']:+.3f} ({', '.join(f'{v:+.3f}' for v in p['per_seed'].values())})")
            lines.append(
                f"{arm:<26} {cyc:>5} {e['labeled']:>7} {ie:>10} {groups:>6}  "
                f"{_fmt(e['segm_ap50_mean'])} ± {_fmt(e['segm_ap50_std'], 3):>5}  "
                f"{_fmt(e['bbox_ap50_mean'])} ± {_fmt(e['bbox_ap50_std'], 3):>5}  {diff:>30}  "
                f"{e['pseudo_instances_mean']:>7.1f} {_fmt(e['pseudo_precision_mean'], 2):>5}")
    lt = doc["labels_to_95pct_full"]
    if lt.get("target") is not None:
        lines.append("")
        lines.append(f"labels to reach {lt['fraction']:.0%} of full supervision (mask mAP50 >= {lt['target']:.4f}; "
                     f"full = {lt['full_segm_ap50']:.4f} with {lt['full_labeled']} labels):")
        for arm, n in lt["arms"].items():
            lines.append(f"  {arm:<26} {n if n is not None else 'not reached'}")
    if doc.get("errors"):
        lines.append("errors: " + "; ".join(f"{e['arm']} seed {e['seed']}: {e['error']}" for e in doc["errors"]))
    lines.append(f"oracle: revealed ⊆ selected for every arm and seed: {doc['oracle_ok']}")
    return "\n".join(lines)


_COLORS = {
    "random": "tab:blue", "random+pseudo": "tab:cyan", "class_entropy": "tab:green", "tsp": "tab:orange",
    "tsp+pseudo": "tab:red", "tsp_instance": "tab:brown", "tsp_diverse": "tab:purple",
    "tsp_diverse+pseudo": "magenta", "tsp_diverse+pseudo+typiclust": "black", "tsp_diverse+typiclust": "tab:gray",
    "core_set": "tab:olive", "mc_dropout": "gold", "learning_loss": "teal",
}
_MARKERS = "osv^D<>pPhX*"


def plot(doc: dict[str, Any], out_png: str | Path) -> Path:
    """Figure 2 style: mAP@0.5 vs labeled images, one line per arm (a colour and marker each),
    shaded ±1 std over seeds, the ceiling dashed; right: paired difference to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    full = doc["summary"].get(FULL, [None])[0]
    arms = [a for a in doc["summary"] if a != FULL]
    palette = plt.get_cmap("tab20")
    style = {a: dict(color=_COLORS.get(a, palette(i % 20)), marker=_MARKERS[i % len(_MARKERS)])
             for i, a in enumerate(arms)}
    ax = axes[0]
    for arm in arms:
        entries = doc["summary"][arm]
        x = [e["labeled"] for e in entries]
        y = np.array([e["segm_ap50_mean"] for e in entries])
        sd = np.array([e["segm_ap50_std"] for e in entries])
        ax.plot(x, y, label=arm, lw=2.0 if "tsp" in arm else 1.4, **style[arm])
        ax.fill_between(x, y - sd, y + sd, color=style[arm]["color"], alpha=0.12)
    if full is not None:
        v, sd = full["segm_ap50_mean"], full["segm_ap50_std"]
        ax.axhline(v, color="k", ls="--", lw=1.2, label=f"full ({full['labeled']} labeled)")
        ax.axhspan(v - sd, v + sd, color="k", alpha=0.06)
        ax.axhline(CEILING_FRACTION * v, color="gray", ls=":", lw=1, label="95% of full")
    ax.set_xticks(sorted({e["labeled"] for a in arms for e in doc["summary"][a]}))
    ax.set_xlabel("labeled images")
    ax.set_ylabel("mask mAP@0.5 (test)")
    ax.set_title("mask mAP@0.5, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1]
    base = doc["paired"]["baseline"]
    for arm, entries in doc["paired"]["arms"].items():
        x = [doc["summary"][arm][[e2["cycle"] for e2 in doc["summary"][arm]].index(e["cycle"])]["labeled"]
             for e in entries]
        y = np.array([e["mean"] for e in entries])
        ax.plot(x, y, **style.get(arm, {}), label=arm)
        for xi, e in zip(x, entries):
            ax.scatter([xi] * len(e["per_seed"]), list(e["per_seed"].values()), s=10,
                       color=style.get(arm, {}).get("color"), alpha=0.5)
    ax.axhline(0, color="k", lw=1)
    ax.set_xlabel("labeled images")
    ax.set_ylabel(f"mask mAP@0.5 minus {base} (same seed)")
    ax.set_title(f"paired difference to {base} (dots: seeds)")
    ax.grid(alpha=0.3)
    s = doc["settings"]
    fig.suptitle(f"{doc.get('title') or doc['dataset']}: {len(s['seeds'])} seeds, b = {s['budget']}, "
                 f"{s['backbone']} at {s['image_size']} px, {doc.get('regime', 'scratch')}")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png
