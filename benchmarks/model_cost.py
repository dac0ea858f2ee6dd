"""Parameters, FLOPs and CPU training-step time: TSPMaskRCNN vs plain torchvision Mask R-CNN.

    python benchmarks/model_cost.py [--size 512] [--steps 3] [--out benchmarks/results/model_cost.json]

Same backbone, heads, image size and batches for both models; the difference is the two TSP IoU
heads and their targets. FLOPs are counted with torch.utils.flop_counter on one inference forward
of a fixed random image (FlopCounterMode counts a multiply-add as 2 FLOPs; GMACs = GFLOPs / 2).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import maskrcnn_resnet50_fpn

from tsp_model.core.config import ModelConfig
from tsp_model.nn.model import build_model, count_parameters


def batch(size: int, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for _ in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        s = size // 8
        masks[0, s : 3 * s, s : 4 * s] = 1
        masks[1, 5 * s : 7 * s, 4 * s : 6 * s] = 1
        boxes = torch.tensor([[s, s, 4 * s, 3 * s], [4 * s, 5 * s, 6 * s, 7 * s]], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def train_step_seconds(models: dict, size: int, steps: int) -> dict[str, list[float]]:
    """Seconds per SGD step for each model, interleaved (A B A B ...) so load drifts hit both."""
    images, targets = batch(size)
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    for i in range(steps + 1):
        for name, model in models.items():
            model.train()
            torch.manual_seed(i)
            t0 = time.perf_counter()
            loss = sum(model(images, targets).values())
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if i:  # the first step warms up allocators
                times[name].append(time.perf_counter() - t0)
    return times


def inference_gflops(model, size: int) -> tuple[float, int]:
    """FLOPs of one inference forward with the full 100 detections (per-instance heads included)."""
    model.eval()
    thresh = model.roi_heads.score_thresh
    model.roi_heads.score_thresh = 0.0  # untrained weights: same detection count for both models
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model([image])[0]
    model.roi_heads.score_thresh = thresh
    return counter.get_total_flops() / 1e9, int(out["boxes"].shape[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--classes", type=int, default=4, help="including background")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/model_cost.json"))
    args = ap.parse_args()

    torch.manual_seed(0)
    models = {
        "maskrcnn_resnet50_fpn": maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, num_classes=args.classes, min_size=args.size, max_size=args.size
        ),
        "tsp_resnet50_fpn": build_model(
            ModelConfig(backbone="resnet50_fpn", min_size=args.size, max_size=args.size), args.classes
        ),
    }
    rows = {}
    step_times = train_step_seconds(models, args.size, args.steps)
    for name, model in models.items():
        gflops, dets = inference_gflops(model, args.size)
        times = step_times[name]
        rows[name] = {
            "params_M": count_parameters(model) / 1e6,
            "inference_GFLOPs": gflops,
            "inference_GMACs": gflops / 2,
            "detections_in_flop_count": dets,
            "train_step_s_median": statistics.median(times),
            "train_step_s_all": times,
        }
    base, tsp = rows["maskrcnn_resnet50_fpn"], rows["tsp_resnet50_fpn"]
    result = {
        "image_size": args.size,
        "batch_images": 2,
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "models": rows,
        "tsp_extra_params_M": tsp["params_M"] - base["params_M"],
        "train_step_time_ratio_tsp_over_plain": tsp["train_step_s_median"] / base["train_step_s_median"],
    }
    print(f"{'model':24s} {'params (M)':>10s} {'GFLOPs':>8s} {'GMACs':>7s} {'dets':>5s} {'train step (s)':>15s}")
    for name, r in rows.items():
        print(
            f"{name:24s} {r['params_M']:10.2f} {r['inference_GFLOPs']:8.1f} {r['inference_GMACs']:7.1f} "
            f"{r['detections_in_flop_count']:5d} {r['train_step_s_median']:15.2f}"
        )
    print(f"TSP heads add {result['tsp_extra_params_M']:.2f} M parameters; "
          f"train step time ratio TSP/plain = {result['train_step_time_ratio_tsp_over_plain']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
