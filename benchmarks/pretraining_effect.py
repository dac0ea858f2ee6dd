"""What pretraining does to label efficiency: the pretrained run against the scratch run, seed by seed.

    python benchmarks/pretraining_effect.py --dataset nuclei --size cpu

Reads ``benchmarks/results/label_efficiency_<dataset>_<size>_{scratch,pretrained}/simulation.json``
(the same split, seeds, schedule and model/S_i/display choices; the pretrained run differs by its
backbone, pretrained on the pool's slices, and chooses its clusters and TypiClust's embedding
again on the validation split) and writes ``pretraining_<dataset>_<size>.json``, ``.png`` and
``.txt`` beside them:

* per arm and cycle (random, tsp, tsp_diverse): mask mAP@0.5 without and with pretraining (mean,
  std) and the paired difference per seed (pretrained - scratch);
* the first cycle (the random first batch's model), and the cold-start batch: TypiClust on the
  chosen embedding against the random first batch, both pretrained;
* TSP's margin over random with and without pretraining, per seed, and how it changed;
* labels to reach 95% of full supervision, against each run's own full model and against the
  scratch one;
* the pretraining's cost (CPU, from the run; GPU when ``benchmarks/results/gpu/pretrain_cost_gpu.json``
  exists) and the targets (first cycle +0.05 mAP@0.5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("random", "tsp", "tsp_diverse")


def _by(doc: dict[str, Any]) -> dict[tuple[str, int, int], float]:
    return {(r["arm"], r["seed"], r["cycle"]): r["segm_ap50"] for r in doc["runs"]}


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.pstdev(values) if len(values) > 1 else (0.0 if values else None),
            "per_seed": values, "positive": sum(v > 1e-9 for v in values), "seeds": len(values)}


def _labels_to(doc: dict[str, Any], arm: str, target: float) -> int | None:
    hit = [e["labeled"] for e in doc["summary"].get(arm, []) if e["segm_ap50_mean"] >= target > 0]
    return min(hit) if hit else None


def compare(scratch: dict[str, Any], pre: dict[str, Any]) -> dict[str, Any]:
    """The comparison document (module docstring)."""
    if scratch["data"]["split"] != pre["data"]["split"]:
        raise SystemExit("the two runs did not split the data alike: compare runs of one preset")
    a, b = _by(scratch), _by(pre)
    seeds = sorted(set(scratch["settings"]["seeds"]) & set(pre["settings"]["seeds"]))
    cycles = sorted({c for (_, _, c) in b if c > 0})
    arms: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        for c in cycles:
            pairs = [(a[(arm, s, c)], b[(arm, s, c)]) for s in seeds if (arm, s, c) in a and (arm, s, c) in b]
            if not pairs:
                continue
            arms.setdefault(arm, []).append({
                "cycle": c, "labeled": next(r["labeled"] for r in pre["runs"] if r["arm"] == arm and r["cycle"] == c),
                "scratch": _stats([x for x, _ in pairs]), "pretrained": _stats([y for _, y in pairs]),
                "pretrained_minus_scratch": _stats([y - x for x, y in pairs])})
    margin = {}
    for arm in ("tsp", "tsp_diverse"):
        for c in cycles[1:]:
            keys = [s for s in seeds if all(k in d for d in (a, b) for k in ((arm, s, c), ("random", s, c)))]
            if keys:
                before = [a[(arm, s, c)] - a[("random", s, c)] for s in keys]
                after = [b[(arm, s, c)] - b[("random", s, c)] for s in keys]
                margin.setdefault(arm, []).append({"cycle": c, "scratch": _stats(before), "pretrained": _stats(after),
                                                   "change": _stats([y - x for x, y in zip(before, after)])})
    cold = []
    for c in cycles:
        keys = [s for s in seeds if ("tsp_diverse+typiclust", s, c) in b and ("random", s, c) in b]
        if keys:
            cold.append({"cycle": c, "typiclust_minus_random": _stats(
                [b[("tsp_diverse+typiclust", s, c)] - b[("random", s, c)] for s in keys])})
    full_s, full_p = (d["summary"].get("full", [{}])[0].get("segm_ap50_mean") for d in (scratch, pre))
    labels = {}
    for arm in (*ARMS, "tsp_diverse+typiclust"):
        labels[arm] = {"scratch_vs_own_full": _labels_to(scratch, arm, 0.95 * (full_s or 0)),
                       "pretrained_vs_own_full": _labels_to(pre, arm, 0.95 * (full_p or 0)),
                       "pretrained_vs_scratch_full": _labels_to(pre, arm, 0.95 * (full_s or 0))}
    first = arms["random"][0]["pretrained_minus_scratch"] if "random" in arms else None
    gpu = RESULTS / "gpu" / "pretrain_cost_gpu.json"
    return {
        "dataset": pre.get("dataset"), "commits": {"scratch": scratch.get("commit"), "pretrained": pre.get("commit")},
        "seeds": seeds, "arms": arms, "tsp_margin_over_random": margin, "cold_start": cold,
        "full": {"scratch": full_s, "pretrained": full_p}, "labels_to_95pct_full": labels,
        "design": {"pretrained_chosen": pre.get("chosen"), "scratch_chosen": scratch.get("chosen"),
                   "clusters": pre["design"].get("clusters"), "typiclust": pre["design"].get("typiclust")},
        "pretrain": pre.get("pretrain"),
        "pretrain_cost_gpu": json.loads(gpu.read_text()).get(pre.get("dataset")) if gpu.is_file() else None,
        "targets": {"first_cycle_gain_min": 0.05, "first_cycle_gain": first["mean"] if first else None,
                    "met": bool(first and first["mean"] is not None and first["mean"] >= 0.05)},
    }


def table(doc: dict[str, Any]) -> str:
    lines = [f"{doc['dataset']}: pretrained (SimSiam on the pool) vs scratch, {len(doc['seeds'])} paired seeds"]
    lines.append(f"{'arm':<14} {'labeled':>7}  {'scratch':>15}  {'pretrained':>15}  {'difference (per seed)':>34}")
    for arm, entries in doc["arms"].items():
        for e in entries:
            d = e["pretrained_minus_scratch"]
            lines.append(f"{arm:<14} {e['labeled']:>7}  {e['scratch']['mean']:.3f} ± {e['scratch']['std']:.3f}  "
                         f"{e['pretrained']['mean']:.3f} ± {e['pretrained']['std']:.3f}  {d['mean']:+.3f} "
                         f"({', '.join(f'{v:+.3f}' for v in d['per_seed'])})")
    for arm, entries in doc["tsp_margin_over_random"].items():
        for e in entries:
            lines.append(f"{arm} - random at cycle {e['cycle']}: scratch {e['scratch']['mean']:+.3f}, pretrained "
                         f"{e['pretrained']['mean']:+.3f} (change {e['change']['mean']:+.3f}, "
                         f"{e['change']['positive']}/{e['change']['seeds']} seeds up)")
    for e in doc["cold_start"]:
        t = e["typiclust_minus_random"]
        lines.append(f"cold start, cycle {e['cycle']}: TypiClust - random {t['mean']:+.3f} "
                     f"({', '.join(f'{v:+.3f}' for v in t['per_seed'])})")
    lines.append(f"first cycle gain {doc['targets']['first_cycle_gain']:+.3f} (target >= +0.05: "
                 f"{'met' if doc['targets']['met'] else 'not met'})")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = {"random": "tab:blue", "tsp": "tab:orange", "tsp_diverse": "tab:purple"}
    for arm, entries in doc["arms"].items():
        x = [e["labeled"] for e in entries]
        for run, style in (("scratch", "--"), ("pretrained", "-")):
            y = [e[run]["mean"] for e in entries]
            ax.plot(x, y, style, marker="o", color=colors.get(arm), label=f"{arm} ({run})")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("mask mAP@0.5 (test), mean over seeds")
    ax.set_title(f"{doc['dataset']}: backbone pretrained on the pool (solid) vs from scratch (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--size", default="cpu")
    args = p.parse_args(argv)
    runs = [RESULTS / f"label_efficiency_{args.dataset}_{args.size}_{r}" / "simulation.json"
            for r in ("scratch", "pretrained")]
    missing = [str(r) for r in runs if not r.is_file()]
    if missing:
        raise SystemExit(f"run the label-efficiency benchmark first: {', '.join(missing)} missing")
    doc = compare(*(json.loads(r.read_text()) for r in runs))
    stem = RESULTS / f"pretraining_{args.dataset}_{args.size}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, stem.with_suffix(".png"))
    stem.with_suffix(".txt").write_text(table(doc) + "\n")
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
