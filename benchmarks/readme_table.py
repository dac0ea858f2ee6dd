"""The README's results table, printed from the label-efficiency JSONs (so no number is typed by hand).

    python benchmarks/readme_table.py            # every label_efficiency_*_cpu_scratch run found

One row per data set and cycle: mask mAP@0.5 on the test set, mean over the paired seeds; for the
other arms also the mean paired difference to ``random`` and how many seeds it was positive on
(``=`` in the first cycle, whose batch is the seed's random batch for every arm).
Then the calibration table: Spearman correlation of c, b, m, s with each validation detection's
true mask IoU (and of b with its box IoU), cycle-2 ``tsp`` model, mean and range over the seeds,
before the issue-23 fixes (``calibration_before``) and after (the run's own ``calibration``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("random", "tsp", "tsp_diverse", "tsp+pseudo")
HEADER = ("| data set | labels | random | tsp | tsp_diverse (what Label Studio serves) | tsp+pseudo |\n"
          "| --- | --- | --- | --- | --- | --- |")


def rows(doc: dict) -> list[str]:
    """Markdown rows of one simulation.json (``summary`` and ``paired`` sections)."""
    name = doc.get("data", {}).get("description", {}).get("name") or doc.get("dataset") or doc["title"]
    paired = doc["paired"]["arms"]
    out = []
    for i, entry in enumerate(doc["summary"]["random"]):
        cells = [name.replace("_", " "), str(entry["labeled"]), f"{entry['segm_ap50_mean']:.3f}"]
        for arm in ARMS[1:]:
            s = doc["summary"].get(arm)
            if not s or i >= len(s):
                cells.append("–")
                continue
            if i == 0:  # every arm's first batch is the seed's shared random batch
                cells.append("=")
                continue
            d = paired[arm][i]
            cells.append(f"{s[i]['segm_ap50_mean']:.3f} ({d['mean']:+.3f}, {d['wins']}/{d['seeds']})")
        out.append("| " + " | ".join(cells) + " |")
    full = doc["summary"].get("full")
    if full:
        out.append(f"| {name.replace('_', ' ')} | all {full[-1]['labeled']} (full) | "
                   f"{full[-1]['segm_ap50_mean']:.3f} | | | |")
    return out


def _calibration_seeds(doc: dict, before: bool) -> list[dict]:
    if before:
        return list(doc.get("calibration_before", {}).get("per_seed", {}).values())
    return [v["cycle2"] for v in doc.get("calibration", {}).values() if v and v.get("cycle2")]


def calibration_rows(doc: dict) -> list[str]:
    """Markdown rows: the detected set's Spearman correlations, mean [min, max] over seeds."""
    name = (doc.get("dataset") or doc["title"]).replace("_", " ")
    out = []
    for label, before in (("before", True), ("after", False)):
        # a seed whose model detected (almost) nothing has no correlation: it is left out, and counted
        seeds = [s["detected"] for s in _calibration_seeds(doc, before)
                 if s.get("detected") and s["detected"]["spearman_mask_iou"].get("s") is not None]
        if not seeds:
            continue
        cells = [name, label, str(len(seeds))]
        for key, score in [("spearman_mask_iou", k) for k in "cbms"] + [("spearman_box_iou", "b")]:
            vals = [s[key][score] for s in seeds if s[key].get(score) is not None]
            cells.append(f"{sum(vals) / len(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]" if vals else "–")
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path, help="simulation.json files (default: the cpu scratch runs)")
    args = p.parse_args(argv)
    files = args.files or sorted(RESULTS.glob("label_efficiency_*_cpu_scratch/simulation.json"))
    if not files:
        print("no simulation.json found: run benchmarks/label_efficiency.py first", file=sys.stderr)
        return 1
    print(HEADER)
    for f in files:
        for row in rows(json.loads(f.read_text())):
            print(row)
    print()
    print("| data set | code | seeds | c | b | m | s | b vs box IoU |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for f in files:
        for row in calibration_rows(json.loads(f.read_text())):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
