"""Load on a real ``tsp-backend``: N clients, each sending M ``/predict`` requests for one slice.

    python benchmarks/backend_load.py                      # 8 clients x 50, 256 px, 10 regions
    python benchmarks/backend_load.py --clients 8 --requests 50 --size 256 --regions 10 \\
        --out benchmarks/results/backend_load.json

The checkpoint is an untrained ``tiny_fpn`` whose masks fill their boxes (the positive mask bias
of the tests' tiny checkpoint) and whose score threshold is 0, so every prediction holds exactly
``--regions`` brush regions: the cost measured is the web stack, image fetch and decode,
inference and region shaping of a full answer. Each request is checked (HTTP 200, one result
with ``--regions`` regions); anything else counts as an error.

Writes JSON (latencies, p50/p95, errors, requests/s, the installed web stack, the machine load
before and after) and a PNG of the latency distribution, and prints a table. The backend runs
with ``--allow-dir`` when it knows the option (older backends read any path).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tsp_cli.local_server import free_port
from tsp_model.core.atomic import atomic_save, atomic_write_text

CLASS_NAMES = ["epidural", "subdural", "intraparenchymal"]
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="lesion" toName="image">'
    + "".join(f'<Label value="{c}"/>' for c in CLASS_NAMES) + "</BrushLabels></View>"
)
STACK = ("flask", "werkzeug", "gunicorn", "jinja2", "itsdangerous", "label-studio-ml", "label-studio-sdk",
         "requests", "urllib3")


def write_checkpoint(model_dir: Path, size: int, regions: int) -> None:
    import torch

    from tsp_model.core.config import ModelConfig, TSPConfig
    from tsp_model.engine.checkpoint import save_checkpoint
    from tsp_model.nn.model import build_model

    torch.manual_seed(0)
    cfg = TSPConfig(model=ModelConfig(backbone="tiny_fpn", min_size=size, max_size=size, box_score_thresh=0.0,
                                      box_detections_per_img=regions))
    model = build_model(cfg.model, num_classes=len(CLASS_NAMES) + 1)
    with torch.no_grad():  # untrained mask logits binarize to nothing; make each mask fill its box
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)
    save_checkpoint(model_dir / "load.pt", {"model": model.state_dict(), "optimizer": None, "scheduler": None,
                                            "scaler": None, "config": cfg.to_dict(), "class_names": CLASS_NAMES,
                                            "epoch": 0, "model_version": "load-test"})


def slice_png(path: Path, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    img = np.where(np.abs(np.hypot(yy - size / 2, xx - size / 2) - size * 0.4) < size * 0.05, 230, 60)
    img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def _load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def _versions() -> dict:
    out = {}
    for name in STACK:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run(clients: int, requests_per_client: int, size: int, regions: int, exe: Path, work: Path) -> dict:
    import requests
    from tqdm import tqdm

    model_dir = work / "models"
    model_dir.mkdir()
    write_checkpoint(model_dir, size, regions)
    image = slice_png(work / "slice.png", size)
    port = free_port()
    args = [str(exe), "--port", str(port), "--model-dir", str(model_dir)]  # default workers and threads
    knows_allow_list = "--allow-dir" in subprocess.run([str(exe), "--help"], capture_output=True, text=True).stdout
    if knows_allow_list:
        args += ["--allow-dir", str(work)]
    env = dict(os.environ, TSP_DEVICE="cpu", LOG_LEVEL="WARNING")
    log = open(work / "backend.log", "wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    body = {"tasks": [{"id": 1, "data": {"image": str(image)}}], "label_config": LABEL_CONFIG, "project": "1.1"}
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(url + "/health", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"tsp-backend did not start; see {work / 'backend.log'}")
            time.sleep(0.5)

        def one(session: requests.Session) -> tuple[float, str | None]:
            t0 = time.perf_counter()
            try:
                r = session.post(url + "/predict", json=body, timeout=300)
                elapsed = time.perf_counter() - t0
                if r.status_code != 200:
                    return elapsed, f"HTTP {r.status_code}"
                (res,) = r.json()["results"]
                if len(res.get("result", [])) != regions:
                    return elapsed, f"{len(res.get('result', []))} regions: {res.get('error', '')}"[:200]
                return elapsed, None
            except Exception as exc:  # a failed request is a measured error, not a crash
                return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:200]

        with requests.Session() as s:
            warm = [one(s) for _ in range(3)]  # model load, first allocations
        if any(err for _, err in warm):
            raise RuntimeError(f"warm-up failed: {warm}")
        bar = tqdm(total=clients * requests_per_client, desc="/predict", unit="req", file=sys.stderr)

        def client(_: int) -> list[tuple[float, str | None]]:
            out = []
            with requests.Session() as s:
                for _ in range(requests_per_client):
                    out.append(one(s))
                    bar.update()
            return out

        load_before = _load()
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as ex:
            results = [r for chunk in ex.map(client, range(clients)) for r in chunk]
        wall = time.perf_counter() - t0
        load_after = _load()
        bar.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    lat = np.array([t for t, _ in results])
    errors = [e for _, e in results if e]
    return {
        "clients": clients, "requests_per_client": requests_per_client, "requests": len(results),
        "image_size": size, "regions_per_prediction": regions, "allow_list_option": knows_allow_list,
        "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
        "mean_s": float(lat.mean()), "max_s": float(lat.max()), "errors": len(errors), "error_examples": errors[:5],
        "requests_per_s": len(results) / wall, "wall_s": wall, "latencies_s": [round(float(v), 4) for v in lat],
        "load_before": load_before, "load_after": load_after,
    }


def plot(doc: dict, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.array(doc["latencies_s"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lat, bins=40, color="tab:blue", alpha=0.8)
    for q, style in (("p50_s", "--"), ("p95_s", ":")):
        ax.axvline(doc[q], color="k", ls=style, label=f"{q[:3]} {doc[q]:.2f} s")
    ax.set_xlabel("/predict latency (s)")
    ax.set_ylabel("requests")
    ax.set_title(f"{doc['clients']} clients x {doc['requests_per_client']} /predict, {doc['image_size']} px, "
                 f"{doc['regions_per_prediction']} regions; {doc['errors']} errors\n"
                 f"load {doc['load_before']['load_1m']:.2f} -> {doc['load_after']['load_1m']:.2f} "
                 f"(flask {doc['stack'].get('flask')}, werkzeug {doc['stack'].get('werkzeug')})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_save(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="tsp-backend /predict under concurrent load (see module docstring)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="requests per client")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--regions", type=int, default=10)
    ap.add_argument("--tsp-backend", type=Path, default=Path(sys.executable).with_name("tsp-backend"))
    ap.add_argument("--label", default="", help="what this run measures (e.g. a commit)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "backend_load.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        doc = run(args.clients, args.requests, args.size, args.regions, args.tsp_backend, Path(tmp))
    doc.update(label=args.label, stack=_versions(), python=platform.python_version(),
               cpu=f"{platform.machine()}, {os.cpu_count()} threads",
               measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_text(args.out, json.dumps(doc, indent=1))
    png = plot(doc, args.out.with_suffix(".png"))
    print(f"| clients x requests | size | regions | p50 s | p95 s | errors | req/s | load 1m before/after |")
    print(f"| {doc['clients']} x {doc['requests_per_client']} | {doc['image_size']} | {doc['regions_per_prediction']} "
          f"| {doc['p50_s']:.2f} | {doc['p95_s']:.2f} | {doc['errors']} | {doc['requests_per_s']:.2f} "
          f"| {doc['load_before']['load_1m']:.2f} / {doc['load_after']['load_1m']:.2f} |")
    print(f"-> {args.out}, {png}")
    return doc


if __name__ == "__main__":
    main()
