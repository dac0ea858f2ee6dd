"""Speed, measured side by side in one run: what the TSP heads cost, how fast a pool is scored.

    python benchmarks/speed.py --smoke                 # this CPU, under 10 minutes
    python benchmarks/speed.py --backbone resnet50_fpn --size 512 --pool 10000 --device cuda

Sections (each a ratio of two measurements taken on the same device, batches and settings):

* train: images/s of one SGD step of ``TSPMaskRCNN`` vs the plain torchvision ``MaskRCNN`` built
  from the same config (``tsp_model.nn.model.build_plain_maskrcnn``), interleaved A/B so that load
  drift hits both. Target: TSP >= 0.9x.
* score: images/s of ``score_pool`` (inference + c, b, m, s, S_i + RLE masks + JSON lines written)
  vs plain torchvision inference over the same DataLoader. Target: >= 0.9x.
* backend: p50/p95 latency of ``/predict`` for one image and throughput with 4 concurrent
  clients, against a real ``tsp-backend`` process on 127.0.0.1 (``--backend``).
* ddp: training images/s with torchrun on 1 and 2 processes (gloo on the CPU, nccl on GPUs).

Writes JSON (``--out``) and prints a table. Every number is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tsp_model.core.config import ModelConfig, TSPConfig
from tsp_model.engine.amp import autocast
from tsp_model.engine.predict import PoolDataset, pool_collate, score_pool
from tsp_model.nn.model import build_model, build_plain_maskrcnn

CLASS_NAMES = ["epidural", "subdural", "intraparenchymal"]


def synthetic_batch(size: int, n: int, seed: int = 0):
    """Images with two bright objects each, and their targets."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    s = size // 8
    for _ in range(n):
        img = torch.rand(3, size, size, generator=g) * 0.3
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, s : 3 * s, s : 4 * s] = 1
        masks[1, 5 * s : 7 * s, 4 * s : 6 * s] = 1
        img[:, masks.any(0).bool()] += 0.6
        boxes = torch.tensor([[s, s, 4 * s, 3 * s], [4 * s, 5 * s, 6 * s, 7 * s]], dtype=torch.float32)
        images.append(img.clamp(0, 1))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def bench_train(cfg: ModelConfig, device: torch.device, batch: int, steps: int, amp: bool) -> dict:
    torch.manual_seed(0)
    models = {
        "tsp": build_model(cfg, len(CLASS_NAMES) + 1).to(device),
        "plain": build_plain_maskrcnn(cfg, len(CLASS_NAMES) + 1).to(device),
    }
    images, targets = synthetic_batch(cfg.min_size, batch)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    opts = {n: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}
    for step in range(steps + 2):  # two warm-up steps
        for name, model in models.items():
            model.train()
            torch.manual_seed(step)
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device, amp):
                loss = sum(model(images, targets).values())
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            _sync(device)
            if step >= 2:
                times[name].append(time.perf_counter() - t0)
    out = {n: {"step_s_median": statistics.median(t), "images_per_s": batch / statistics.median(t)} for n, t in times.items()}
    out["ratio_tsp_over_plain"] = out["tsp"]["images_per_s"] / out["plain"]["images_per_s"]
    return out


def write_pool(folder: Path, count: int, size: int) -> list[tuple[int, Path]]:
    """PNG slices from the project's phantom generator (real decoding work for the loader)."""
    from tsp_model.synth.phantom import generate_phantoms

    ann = generate_phantoms(folder, count=count, size=size, seed=0, lesion_rate=0.7, progress=False)
    data = json.loads(Path(ann).read_text())
    return [(im["id"], Path(ann).parent / im["file_name"]) for im in data["images"]]


def bench_score(cfg: ModelConfig, device: torch.device, pool: list, batch: int, workers: int, amp: bool, out_dir: Path,
                detections: int = 100) -> dict:
    torch.manual_seed(0)
    config = TSPConfig(model=cfg)
    config.score.batch_size, config.score.workers, config.score.amp = batch, workers, amp
    tsp = build_model(cfg, len(CLASS_NAMES) + 1).to(device).eval()
    plain = build_plain_maskrcnn(cfg, len(CLASS_NAMES) + 1).to(device).eval()
    # Untrained weights: make both models return exactly `detections` instances per image, so the
    # per-instance work (heads, masks, scores, RLE) is the same for both (100 = the worst case).
    tsp.roi_heads.score_thresh = plain.roi_heads.score_thresh = 0.0
    tsp.roi_heads.detections_per_img = plain.roi_heads.detections_per_img = detections

    def run_plain() -> float:
        loader = DataLoader(PoolDataset(pool), batch_size=batch, num_workers=workers, collate_fn=pool_collate)
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for items in loader:
                images = [im.to(device, non_blocking=True) for im, _, _ in items]
                with autocast(device, amp):
                    outputs = plain(images)
                for o in outputs:  # results leave the device, as the scorer's do
                    o["masks"].cpu()
        _sync(device)
        return time.perf_counter() - t0

    def run_tsp() -> float:
        _sync(device)
        t0 = time.perf_counter()
        score_pool(tsp, pool, class_names=CLASS_NAMES, config=config, out_path=out_dir / "scores.jsonl",
                   model_version="bench", progress=False)
        _sync(device)
        return time.perf_counter() - t0

    t_plain = [run_plain(), run_plain()]  # first pass warms up
    t_tsp = [run_tsp(), run_tsp()]
    n = len(pool)
    res = {
        "images": n,
        "detections_per_image": detections,
        "plain_images_per_s": n / t_plain[-1],
        "tsp_images_per_s": n / t_tsp[-1],
        "scores_file_bytes": (out_dir / "scores.jsonl").stat().st_size,
    }
    res["ratio_tsp_over_plain"] = res["tsp_images_per_s"] / res["plain_images_per_s"]
    res["seconds_per_10000_images_tsp"] = 10000 / res["tsp_images_per_s"]
    return res


def bench_ddp(cfg: ModelConfig, procs: list[int], size: int, images: int, epochs: int, work: Path) -> dict:
    """torchrun training throughput on 1, 2, ... processes (same global data, same epochs)."""
    from tsp_model.core.config import dump_toml
    from tsp_model.synth.phantom import generate_phantoms

    ann = generate_phantoms(work / "ddp_data", count=images, size=size, seed=1, progress=False)
    out = {}
    for n in procs:
        config = TSPConfig(model=cfg)
        config.train.epochs, config.train.batch_size, config.train.workers = epochs, 2, 0
        cfg_path = work / f"ddp_{n}.toml"
        cfg_path.write_text(dump_toml(config))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "tsp_model.engine.train", "--config", str(cfg_path), "--labeled", str(ann),
               "--images", str(Path(ann).parent), "--out", str(work / f"ddp_{n}.pt")]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // n)))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {n} processes failed:\n{proc.stderr[-2000:]}")
        ckpt = torch.load(work / f"ddp_{n}.pt", map_location="cpu", weights_only=True)
        train_s = sum(h.get("seconds", 0.0) for h in ckpt.get("history", [])) or wall
        out[str(n)] = {"processes": n, "wall_s": wall, "train_s": train_s, "images_per_s": images * epochs / train_s}
    return out


def bench_backend(cfg: ModelConfig, size: int, requests_n: int, work: Path) -> dict:
    """p50/p95 of /predict for one image, and throughput with 4 concurrent clients."""
    import concurrent.futures
    import socket

    import requests

    from tsp_model.engine.checkpoint import make_model_version, save_checkpoint

    torch.manual_seed(0)
    model = build_model(cfg, len(CLASS_NAMES) + 1)
    model_dir = work / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_checkpoint(model_dir / "bench.pt", {
        "format": "tsp-checkpoint/1", "model": state, "config": TSPConfig(model=cfg).to_dict(),
        "class_names": CLASS_NAMES, "epoch": 1, "model_version": make_model_version(state),
    })
    img = work / "one.png"
    Image.fromarray((np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)).save(img)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("tsp-backend")
    proc = subprocess.Popen([str(exe), "--port", str(port), "--model-dir", str(model_dir), "--workers", "1",
                             "--allow-dir", str(work)],  # the backend reads only allowed folders
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        label_config = (
            '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
            + "".join(f'<Label value="{c}"/>' for c in CLASS_NAMES) + "</BrushLabels></View>"
        )
        body = {"tasks": [{"id": 1, "data": {"image": str(img)}}], "label_config": label_config, "project": "1.1"}

        def one() -> float:
            t0 = time.perf_counter()
            r = requests.post(f"{url}/predict", json=body, timeout=300)
            r.raise_for_status()
            return time.perf_counter() - t0

        one()  # warm-up (model load)
        lat = [one() for _ in range(requests_n)]
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda _: one(), range(requests_n)))
        conc_wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "requests": requests_n,
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "concurrent_clients": 4,
        "concurrent_requests_per_s": requests_n / conc_wall,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="TSP speed benchmark (see module docstring)")
    ap.add_argument("--smoke", action="store_true", help="CPU size: tiny_fpn at 256 px, small pool")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--pool", type=int, default=None, help="images scored")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per model")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--sections", default="train,score,backend,ddp")
    ap.add_argument("--ddp-procs", default="1,2")
    ap.add_argument("--detections", type=int, default=100,
                    help="instances per image in the scoring section (100 = torchvision's cap, the worst case)")
    ap.add_argument("--backend-requests", type=int, default=None, help="requests per latency measurement")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = ap.parse_args(argv)

    backbone = args.backbone or ("tiny_fpn" if args.smoke else "resnet50_fpn")
    size = args.size or (256 if args.smoke else 512)
    pool_n = args.pool or (40 if args.smoke else 10000)
    steps = args.steps or (5 if args.smoke else 20)
    device = torch.device(args.device)
    amp = not args.no_amp
    cfg = ModelConfig(backbone=backbone, min_size=size, max_size=size)
    sections = set(args.sections.split(","))
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "backbone": backbone, "image_size": size, "amp": amp,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "train" in sections:
            result["train"] = bench_train(cfg, device, args.batch, steps, amp)
        if "score" in sections:
            pool = write_pool(work / "pool", pool_n, size)
            result["score"] = bench_score(cfg, device, pool, args.batch, args.workers, amp, work, args.detections)
        if "backend" in sections:
            result["backend"] = bench_backend(cfg, size, args.backend_requests or (20 if args.smoke else 50), work)
        if "ddp" in sections:
            procs = [int(p) for p in args.ddp_procs.split(",")]
            result["ddp"] = bench_ddp(cfg, procs, min(size, 128) if args.smoke else size, 16 if args.smoke else 256, 1, work)

    print(f"device: {result['device']}  backbone: {backbone}  size: {size}  amp: {amp}")
    if "train" in result:
        t = result["train"]
        print(f"train  images/s  plain {t['plain']['images_per_s']:8.2f}  tsp {t['tsp']['images_per_s']:8.2f}  "
              f"ratio {t['ratio_tsp_over_plain']:.3f} (target >= 0.9)")
    if "score" in result:
        s = result["score"]
        print(f"score  ({s['detections_per_image']} detections/image) images/s  plain {s['plain_images_per_s']:8.2f}  tsp {s['tsp_images_per_s']:8.2f}  "
              f"ratio {s['ratio_tsp_over_plain']:.3f} (target >= 0.9); 10,000 images: {s['seconds_per_10000_images_tsp']:.0f} s")
    if "backend" in result:
        b = result["backend"]
        print(f"backend /predict p50 {b['p50_s'] * 1000:.0f} ms  p95 {b['p95_s'] * 1000:.0f} ms  "
              f"4 clients: {b['concurrent_requests_per_s']:.2f} req/s")
    if "ddp" in result:
        for n, d in result["ddp"].items():
            print(f"ddp    {n} process(es): {d['images_per_s']:.2f} images/s (train {d['train_s']:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
