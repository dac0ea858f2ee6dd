"""What each Figure 2 baseline adds to a cycle, and batched vs separate MC-dropout passes.

    python benchmarks/baselines_cost.py [--backbone tiny_fpn] [--size 128] [--batch 4]
        [--passes 10] [--repeats 5] [--pool 10000] [--out benchmarks/results/baselines_cost.json]

Measured on this machine's CPU as process CPU time (interleaved repeats, medians), untrained model with
``box_score_thresh = 0`` so every image carries the full ``box_detections_per_img`` detections
(``--detections``, default 100 = torchvision's cap: the worst case for MC dropout, whose cost
grows with T x detections):

* scoring, seconds per image: plain (tsp, class_entropy, random), + embeddings (core_set),
  + T batched dropout passes (mc_dropout), with the loss-prediction module (learning_loss),
  and the reference: T separate full forward passes with dropout on;
* training, seconds per step (batch 2): without and with the learning-loss module (its
  per-image true losses rerun the RPN and RoI heads once per image);
* selection on a synthetic pool of ``--pool`` records: each strategy's ``select`` (core_set:
  1280-d embeddings as stored, 3000 labeled, b = 500).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tsp_model.core.config import ModelConfig
from tsp_model.nn.dropout_heads import mc_dropout
from tsp_model.engine.embeddings import encode_embedding
from tsp_model.engine.predict import predict_images
from tsp_model.nn.model import build_model
from tsp_model.core.records import ImageScore, InstanceScore
from tsp_model.al.strategies import get_strategy

NAMES = ["epidural", "subdural", "intraparenchymal"]


def images_and_targets(size: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    s = size // 8
    for _ in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, s : 3 * s, s : 4 * s] = 1
        masks[1, 5 * s : 7 * s, 4 * s : 6 * s] = 1
        boxes = torch.tensor([[s, s, 4 * s, 3 * s], [4 * s, 5 * s, 6 * s, 7 * s]], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def timed(fn) -> float:
    """CPU seconds of this process (all its threads): on a shared, loaded machine this follows the
    work done far more steadily than wall time, which other processes' load inflates."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def scoring(args) -> dict:
    base = dict(backbone=args.backbone, min_size=args.size, max_size=args.size, box_score_thresh=0.0,
                box_detections_per_img=args.detections)
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**base), 4).eval()
    torch.manual_seed(0)
    drop = build_model(ModelConfig(**base, dropout=0.25), 4).eval()
    torch.manual_seed(0)
    ll = build_model(ModelConfig(**base, learning_loss=True), 4).eval()
    images, _ = images_and_targets(args.size, args.batch)
    T = args.passes

    def separate():
        with torch.inference_mode(), mc_dropout(drop):
            for _ in range(T):
                drop(images)

    runs = {
        "plain": lambda: predict_images(plain, images, NAMES, amp=False),
        "core_set_embeddings": lambda: predict_images(plain, images, NAMES, amp=False, embeddings=True),
        "mc_dropout_batched": lambda: predict_images(drop, images, NAMES, amp=False, mc_passes=T),
        "learning_loss_inference": lambda: predict_images(ll, images, NAMES, amp=False),
        "mc_dropout_separate_T_forwards": separate,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats + 1):
        for name, fn in runs.items():
            t = timed(fn)
            if r:  # the first round warms up allocators
                times[name].append(t / args.batch)
    recs = predict_images(drop, images, NAMES, amp=False)
    return {
        "seconds_per_image_median": {k: statistics.median(v) for k, v in times.items()},
        "seconds_per_image_all": times,
        "detections_per_image": [len(r.instances) for r in recs],
    }


def training(args) -> dict:
    base = dict(backbone=args.backbone, min_size=args.size, max_size=args.size)
    models = {}
    for name, extra in (("plain", {}), ("learning_loss", {"learning_loss": True})):
        torch.manual_seed(0)
        models[name] = build_model(ModelConfig(**base, **extra), 4).train()
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for n, m in models.items()}
    images, targets = images_and_targets(args.size, 2)
    times: dict[str, list[float]] = {n: [] for n in models}
    for i in range(args.repeats + 1):
        for name, model in models.items():
            torch.manual_seed(i)

            def step():
                loss = sum(model(images, targets).values())
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()

            t = timed(step)
            if i:
                times[name].append(t)
    return {"seconds_per_step_median": {k: statistics.median(v) for k, v in times.items()}, "seconds_per_step_all": times}


def selection(args) -> dict:
    rng = np.random.default_rng(0)
    n, dim, budget = args.pool, 1280, 500
    inst = InstanceScore(label=1, category="a", box=[0, 0, 1, 1], c=0.5, b=0.5, m=0.5, s=0.5, entropy=0.5)

    def rec(i, extras):
        return ImageScore(i, f"{i}.png", 512, 512, S=float(rng.random()), instances=[inst], extras=extras)

    emb = rng.normal(size=(n + 3000, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = [
        rec(i, {"mc_uncertainty": float(rng.random()), "predicted_loss": float(rng.random()),
                "embedding": encode_embedding(emb[i])})
        for i in range(n)
    ]
    labeled = [rec(n + j, {"embedding": encode_embedding(emb[n + j])}) for j in range(3000)]
    out = {}
    for name in ("tsp", "tsp_instance", "class_entropy", "random", "mc_dropout", "learning_loss", "core_set"):
        t = timed(lambda: get_strategy(name).select(pool, budget, seed=0, labeled=labeled))
        out[name] = t
    return {"pool": n, "budget": budget, "labeled": 3000, "embedding_dim": dim, "seconds": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny_fpn")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--detections", type=int, default=100, help="detections per image (box_detections_per_img)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pool", type=int, default=10_000)
    ap.add_argument("--skip-selection", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/baselines_cost.json"))
    args = ap.parse_args()
    # One thread by default: process CPU time then measures work without OpenMP spin-waits.
    torch.set_num_threads(args.threads)
    result = {
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "device": "cpu"},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "scoring": scoring(args),
    }
    if not args.skip_training:
        result["training"] = training(args)
    if not args.skip_selection:
        result["selection"] = selection(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    s = result["scoring"]["seconds_per_image_median"]
    print(json.dumps({"scoring_s_per_image": s, "training_s_per_step": result.get("training", {}).get("seconds_per_step_median"),
                      "selection_s": result.get("selection", {}).get("seconds")}, indent=2))
    print(f"MC batched / separate: {s['mc_dropout_batched']:.4f} / {s['mc_dropout_separate_T_forwards']:.4f} s per image "
          f"({s['mc_dropout_separate_T_forwards'] / s['mc_dropout_batched']:.1f}x)")


if __name__ == "__main__":
    main()
