"""Calibration of c, b, m and s on validation detections of the cycle-2 ``tsp`` model.

    python benchmarks/calibration.py --dataset nuclei --out benchmarks/results/calibration_before_nuclei.json

Trains, per seed and exactly as ``benchmarks/label_efficiency.py --size cpu`` does (same data,
split, schedule and S_i design), the cycle-1 model on a random first batch and the cycle-2 model
on the batch ``tsp`` selects from the pool, then predicts the validation images and writes the
Spearman correlations of :func:`tsp_model.simulation.calibration.calibration` per seed. It uses
only the package's public API, so the same file measures an older commit ("before") when run
from that commit's tree with this file and ``tsp_model/simulation/calibration.py`` copied in.
The label-efficiency run records the same numbers for its own ``tsp`` models ("after").
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import label_efficiency as le  # noqa: E402


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    from tsp_model.al.cycle import run_cycle
    from tsp_model.engine.checkpoint import load_model
    from tsp_model.engine.predict import PoolDataset, predict_images
    from tsp_model.simulation.calibration import calibration
    from tsp_model.simulation.oracle import Oracle, ground_truth
    try:
        from tsp_model.simulation.data import load_simulation_data
    except ImportError:  # an older tree (the "before" measurement)
        from tsp_model.simulation.replay import load_simulation_data

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["phantom_series", "nuclei"], required=True)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--empty-rule", default="constant")
    p.add_argument("--work", type=Path, help="model folder (default benchmarks/.cache/calibration/<dataset>)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = le.settings_for(args.dataset, "cpu", "scratch")
    pool_path, test_path, extra = le._data(args.dataset, "cpu", le.CACHE)
    data, _ = load_simulation_data(pool_path, None, settings, test_coco=test_path, extra_tests=extra)
    work = args.work or le.CACHE / "calibration" / args.dataset
    pool_ids = list(data.pool.ids)
    val = data.validation
    per_seed = {}
    for seed in [int(v) for v in args.seeds.split(",")]:
        cfg = settings.config(seed)
        cfg.active.score_threshold, cfg.active.empty_image_rule = args.score_threshold, args.empty_rule
        cfg.active.strategy, cfg.active.pseudo_labels = "tsp", False
        oracle = Oracle(data.pool)
        cfg.train.epochs = settings.epochs_for(settings.budget)
        c1 = run_cycle(cfg, labeled_ids=[], pool_ids=pool_ids, dataset=oracle, prev_checkpoint=None,
                       out_dir=work / f"seed{seed}" / "cycle1", cycle_index=1, progress=False, resume=True)
        cfg.train.epochs = settings.epochs_for(2 * settings.budget)
        c2 = run_cycle(cfg, labeled_ids=c1.labeled_ids, pool_ids=c1.pool_ids, dataset=oracle,
                       prev_checkpoint=c1.checkpoint, out_dir=work / f"seed{seed}" / "tsp", cycle_index=2,
                       progress=False, resume=True)
        loaded = load_model(c2.checkpoint, device="cpu")
        items = PoolDataset([(i, val.image_path(val.index_of(i))) for i in val.ids])
        records = []
        for k in range(0, len(items), 8):
            batch = [items[j] for j in range(k, min(k + 8, len(items)))]
            records += predict_images(loaded.model, [b[0] for b in batch], loaded.class_names, cfg.active,
                                      image_ids=[b[1] for b in batch], amp=False)
        per_seed[str(seed)] = calibration(records, lambda i: ground_truth(val, int(i)), args.score_threshold)
        print(seed, json.dumps(per_seed[str(seed)]["detected"]["spearman_mask_iou"]), flush=True)
    doc = {"dataset": args.dataset, "commit": _commit(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
           "model": "cycle-2 tsp model (no pseudo labels), cpu size, validation split",
           "design": {"score_threshold": args.score_threshold, "empty_image_rule": args.empty_rule,
                      "norm": cfg.model.norm, "mask_threshold": cfg.model.mask_threshold},
           "per_seed": per_seed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
