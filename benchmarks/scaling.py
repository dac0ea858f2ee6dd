"""How every stage of a cycle grows with the project: 200, 2,000 and 20,000 tasks on a real Label Studio.

    python benchmarks/scaling.py                         # 200, 2000, 20000 tasks (about an hour here)
    python benchmarks/scaling.py --sizes 200 2000 --tag smoke

For each size: a fresh project on a local Label Studio 1.23 (``tsp_cli.local_server``, SQLite)
with N generated 64 px slices served as local files, ``--labeled`` of them annotated "no lesion"
and every other task holding a prediction of a previous model version (imported directly: the
predictions a new model must replace). Then each stage runs as its own process, timed, with its
peak RSS read from ``os.wait4``:

* ``pull``: ``tsp-sync pull`` (task listing and every image downloaded into the cache)
* ``score``: ``python -m tsp_model.engine.score``, the pool scoring ``tsp-sync score`` runs (in
  its own process for ``--gpus 1``, under torchrun for more): an untrained tiny_fpn checkpoint
  on the CPU, records streamed to the score file
* ``push``: ``tsp-sync score``, which reuses that score file: one prediction per task (labeled tasks
  carry one for their cluster),
  then the previous version's predictions deleted
* ``reorder``: ``tsp-sync reorder`` (Uncertainty sampling, the view, the ``/next`` check)
* ``status``: ``tsp-sync status``

and afterwards the script counts, from Label Studio's own prediction list, the unlabeled tasks
holding exactly one prediction of the current version (the run fails if any does not).

Label Studio runs with its memory-efficient prediction import turned on
(``fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short=true``, as in
docker-compose.yml): without it, 1.23 recounts the counters of every task of the project on each
import request, so a push costs time growing with the square of the project (``--legacy-import``
measures that instead).

Per stage: wall time and peak RSS at each size, the log-log slope of time against N, and the
ratio of times from the second-largest to the largest size (targets: <= 12x for 10x the tasks,
peak RSS of tsp-sync < 2 GB). Writes ``benchmarks/results/scaling[_TAG].json`` and ``.png`` and
prints a table; the 1-minute load average is recorded next to every stage.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
CLASS_NAMES = ["epidural", "subdural", "intraparenchymal"]
STAGES = ("pull", "score", "push", "reorder", "status")
TRAIN_TOML = """
[model]
backbone = "tiny_fpn"
min_size = {size}
max_size = {size}
box_score_thresh = 0.0
box_detections_per_img = {detections}

[train]
device = "cpu"
workers = 0
amp = false

[score]
batch_size = 8
workers = 0
amp = false
"""
TSP_TOML = """
[projects.bench]
label_studio_project = {project_id}
workdir = "work"
config = "train.toml"
push_batch = {push_batch}
"""


def slice_png(size: int, seed: int) -> bytes:
    """A head-CT-like 8-bit slice: a bright ring, a blob at a random place, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    img = np.where(np.abs(r - size * 0.4) < size * 0.05, 230.0, 60.0)
    cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
    img[np.hypot(yy - cy, xx - cx) < size * 0.1] = 180
    img += rng.normal(0, 5, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def tiny_checkpoint(path: Path, version: str, config: Path) -> Path:
    """An untrained tiny_fpn checkpoint with deterministic detections, each with a non-empty mask."""
    from tsp_model.core.config import load_config
    from tsp_model.engine.checkpoint import save_checkpoint
    from tsp_model.nn.model import build_model

    torch.manual_seed(0)
    cfg = load_config(config)
    model = build_model(cfg.model, num_classes=len(CLASS_NAMES) + 1)
    with torch.no_grad():  # untrained mask logits binarize to empty masks: give them a positive bias
        model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)
    return save_checkpoint(path, {"model": model.state_dict(), "optimizer": None, "scheduler": None, "scaler": None,
                                  "config": cfg.to_dict(), "class_names": CLASS_NAMES, "epoch": 0,
                                  "model_version": version})


# A child's peak RSS starts at its parent's RSS when it was forked (Linux keeps the high-water
# mark across exec), and this process holds torch: each stage is started by a small launcher, so
# its peak RSS is its own, not this process's.
LAUNCHER = ("import os, subprocess, sys\n"
            "proc = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(proc.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_stage(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run one stage as its own process: wall time, its peak RSS (wait4 in a small launcher),
    load before and after."""
    load0 = os.getloadavg()[0]
    rss_file = cwd / "stage.maxrss"
    t0 = time.perf_counter()
    with open(cwd / "stage.log", "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        code = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(rss_file), *cmd], cwd=cwd, env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {code}; see {cwd / 'stage.log'}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(int(rss_file.read_text()) / 1024, 1),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def build_project(client, ls, n: int, labeled: int, size: int, old_version: str) -> dict:
    """N tasks on local files; ``labeled`` annotated "no lesion"; the rest a prediction of
    ``old_version``. Returns ids and the setup's timings."""
    from label_studio_sdk.converter.brush import mask2rle

    from tsp_cli.commands.demo import label_config  # the quickstart's project: BrushLabels "lesion" on "image"

    t0 = time.perf_counter()
    folder = ls.files_root / f"scale-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(slice_png(size, seed=i))
    project = client.projects.create(title=f"scaling {n}", label_config=label_config(CLASS_NAMES))
    client.import_storage.local.create(project=project.id, path=str(folder), title="slices")
    for start in range(0, n, 2000):
        client.projects.import_tasks(project.id, request=[
            {"image": f"/data/local-files/?d=scale-{n}/{i}.png"} for i in range(start, min(n, start + 2000))])
    http = client._client_wrapper.httpx_client
    ids: list[int] = []
    last = 0
    while True:  # every task id, in pages
        q = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last}]},
            "ordering": ["tasks:id"]}
        page = http.request("api/tasks/", method="GET", params={
            "project": project.id, "page": 1, "page_size": 1000, "include": "id", "query": json.dumps(q)}).json()
        got = [t["id"] for t in page.get("tasks", [])]
        ids += got
        if len(got) < 1000:
            break
        last = got[-1]
    assert len(ids) == n, (len(ids), n)
    for tid in ids[:labeled]:
        client.annotations.create(tid, result=[])
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: size // 2, size // 4: size // 2] = 255
    region = {"type": "brushlabels", "from_name": "lesion", "to_name": "image", "original_width": size,
              "original_height": size, "score": 0.5,
              "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask)], "brushlabels": ["subdural"]}}
    pool = ids[labeled:]
    for start in range(0, len(pool), 1000):
        client.projects.import_predictions(id=project.id, request=[
            {"task": tid, "result": [region], "score": 0.5, "model_version": old_version}
            for tid in pool[start:start + 1000]])
    return {"project_id": project.id, "pool": pool, "labeled": ids[:labeled],
            "setup_seconds": round(time.perf_counter() - t0, 1)}


def check_predictions(client, project_id: int, pool: list[int], version: str) -> dict:
    """From Label Studio's prediction list: how many unlabeled tasks hold exactly one prediction of
    ``version`` and nothing else. Labeled tasks may hold one too (their cluster, for the queue)."""
    http = client._client_wrapper.httpx_client
    preds = http.request("api/predictions/", method="GET", params={"project": project_id},
                         request_options={"timeout_in_seconds": 600}).json()
    by_task: dict[int, list[str]] = {}
    for p in preds:
        by_task.setdefault(int(p["task"]), []).append(str(p["model_version"]))
    pool_set = set(pool)
    exactly_one = sum(by_task.get(t) == [version] for t in pool)
    return {"unlabeled": len(pool), "exactly_one_current": exactly_one,
            "zero_current": sum(version not in by_task.get(t, []) for t in pool),
            "two_or_more_current": sum(by_task.get(t, []).count(version) > 1 for t in pool),
            "other_versions_left": sum(any(v != version for v in vs) for vs in by_task.values()),
            "on_labeled_tasks": sum(1 for t in by_task if t not in pool_set),
            "labeled_with_two_or_more": sum(len(vs) > 1 for t, vs in by_task.items() if t not in pool_set),
            "ok": exactly_one == len(pool) and all(vs == [version] for vs in by_task.values())}


def run_size(client, ls, n: int, args, base: Path, env: dict[str, str]) -> dict:
    work = base / f"n{n}"
    work.mkdir(parents=True)
    old_version = "tsp-scaling-previous"
    info = build_project(client, ls, n, args.labeled, args.size, old_version)
    (work / "train.toml").write_text(TRAIN_TOML.format(size=args.size, detections=args.detections))
    (work / "tsp.toml").write_text(TSP_TOML.format(project_id=info["project_id"], push_batch=args.push_batch))
    version = "tsp-scaling-current"
    ckpt = tiny_checkpoint(work / "work" / "models" / f"{version}.pt", version, work / "train.toml")
    env = dict(env, TSP_CONFIG=str(work / "tsp.toml"))
    sync = [str(Path(sys.executable).with_name("tsp-sync")), "--no-progress"]
    stages: dict[str, dict] = {}
    print(f"[{n}] setup {info['setup_seconds']} s; load {os.getloadavg()[0]:.2f}", flush=True)

    stages["pull"] = run_stage(sync + ["pull", "-p", "bench"], work, env)
    snap = work / "work" / "snapshots" / (work / "work" / "snapshots" / "latest").read_text().strip()
    stages["score"] = run_stage([sys.executable, "-m", "tsp_model.engine.score", "--checkpoint", str(ckpt),
                                 "--pool", str(snap / "unlabeled.json"), "--images", str(work / "work" / "images"),
                                 "--out", str(work / "work" / "scores" / f"{version}.s{snap.name}.jsonl"),
                                 "--config", str(work / "train.toml"), "--no-progress"], work, env)
    stages["push"] = run_stage(sync + ["score", "-p", "bench"], work, env)
    stages["reorder"] = run_stage(sync + ["reorder", "-p", "bench"], work, env)
    stages["status"] = run_stage(sync + ["status", "-p", "bench"], work, env)
    for name in STAGES:
        print(f"[{n}] {name}: {stages[name]}", flush=True)
    check = check_predictions(client, info["project_id"], info["pool"], version)
    print(f"[{n}] check: {check}", flush=True)
    last = json.loads((work / "work" / "state.json").read_text())["last_score"]
    return {"tasks": n, "labeled": args.labeled, "setup_seconds": info["setup_seconds"], "stages": stages,
            "check": check, "push": {k: last[k] for k in ("pushed", "already", "deleted")}}


def fit(sizes: list[int], values: list[float]) -> dict:
    """Log-log slope of ``values`` against ``sizes`` and the ratio of the two largest sizes."""
    slope = float(np.polyfit(np.log(sizes), np.log(np.maximum(values, 1e-3)), 1)[0]) if len(sizes) > 1 else math.nan
    ratio = values[-1] / values[-2] if len(values) > 1 and values[-2] > 0 else math.nan
    return {"loglog_slope": round(slope, 3), "ratio_last_two": round(ratio, 2),
            "sizes_ratio": sizes[-1] / sizes[-2] if len(sizes) > 1 else math.nan}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    sizes = [r["tasks"] for r in runs]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in STAGES:
        secs = [r["stages"][name]["seconds"] for r in runs]
        ax_t.plot(sizes, secs, "o-", label=f"{name} (slope {result['growth'][name]['loglog_slope']:.2f})")
        ax_m.plot(sizes, [r["stages"][name]["peak_rss_mb"] for r in runs], "o-", label=name)
    top = max(r["stages"][s]["seconds"] for r in runs for s in STAGES)
    ax_t.plot(sizes, [top * s / sizes[-1] for s in sizes], "k:", label="linear (slope 1)")
    ax_t.set(xscale="log", yscale="log", xlabel="tasks", ylabel="wall time (s)", title="time per stage")
    ax_m.axhline(2048, color="r", ls="--", label="2 GB target")
    ax_m.set(xscale="log", xlabel="tasks", ylabel="peak RSS (MB)", title="peak RSS per stage process")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tsp-sync scaling on a local Label Studio (SQLite), {result['machine']['cpus']} CPUs, "
                 f"load {result['machine']['load_start']:.1f}-{result['machine']['load_end']:.1f}", fontsize=10)
    fig.tight_layout()
    from tsp_model.core.atomic import atomic_save

    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def table(result: dict) -> str:
    runs = result["runs"]
    cols = "".join(f"{str(r['tasks']) + ' tasks':>22}" for r in runs)
    lines = [f"{'stage':<8}{cols}   slope  ratio  load", f"{'':<8}" + f"{'time / peak RSS':>22}" * len(runs)]
    for name in STAGES:
        cells = "".join(f"{r['stages'][name]['seconds']:>10.1f} s {r['stages'][name]['peak_rss_mb']:>6.0f} MB"
                        for r in runs)
        g = result["growth"][name]
        loads = [r["stages"][name]["load_before"] for r in runs] + [r["stages"][name]["load_after"] for r in runs]
        lines.append(f"{name:<8}{cells}  {g['loglog_slope']:>6.2f} {g['ratio_last_two']:>6.2f}  "
                     f"{min(loads):.1f}-{max(loads):.1f}")
    for r in runs:
        c = r["check"]
        lines.append(f"{r['tasks']} tasks: {c['exactly_one_current']}/{c['unlabeled']} unlabeled tasks hold exactly "
                     f"one current prediction ({c['zero_current']} none, {c['two_or_more_current']} two or more, "
                     f"{c['other_versions_left']} with other versions); pushed {r['push']['pushed']}, "
                     f"deleted {r['push']['deleted']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 20000])
    p.add_argument("--labeled", type=int, default=10, help="tasks annotated 'no lesion' per project")
    p.add_argument("--size", type=int, default=64, help="slice size in pixels")
    p.add_argument("--detections", type=int, default=3, help="detections per image of the tiny model")
    p.add_argument("--push-batch", type=int, default=100)
    p.add_argument("--legacy-import", action="store_true",
                   help="leave Label Studio's default (legacy) prediction import on")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--keep", type=Path, help="keep the Label Studio data and work folders here")
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                   help="Label Studio's database: SQLite (the quickstart's), or PostgreSQL with docker-compose.yml's "
                        "settings on a throwaway local cluster (tests/pg_fixtures.py)")
    args = p.parse_args(argv)

    from label_studio_sdk import LabelStudio

    from tsp_cli.local_server import LocalLabelStudio
    from tsp_model.core.atomic import atomic_write_text
    from tsp_model.simulation.run import source_commit

    base = args.keep or Path(tempfile.mkdtemp(prefix="tsp-scaling-"))
    base.mkdir(parents=True, exist_ok=True)
    extra = {} if args.legacy_import else {FLAG: "true"}
    pg = None
    if args.database == "postgresql":
        sys.path.insert(0, str(ROOT))
        from tests.pg_fixtures import LocalPostgres, compose_label_studio_env

        pg = LocalPostgres().start()
        database = f"PostgreSQL {pg.version()}"
        extra = {**compose_label_studio_env(pg), **extra}
    else:
        database = "SQLite"
    load_start = os.getloadavg()[0]
    ls = LocalLabelStudio(base / "label-studio", extra_env=extra)
    try:
        ls.start()
        client = LabelStudio(base_url=ls.url, api_key=ls.token, timeout=600)
        env = dict(os.environ, LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.token, OMP_NUM_THREADS="1")
        runs = [run_size(client, ls, n, args, base, env) for n in sorted(args.sizes)]
    finally:
        ls.stop()
        if pg is not None:
            pg.stop()
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    sizes = [r["tasks"] for r in runs]
    result = {
        "benchmark": "scaling",
        "commit": source_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_start": round(load_start, 2),
                    "load_end": round(os.getloadavg()[0], 2)},
        "label_studio": {"version": f"1.23.2 (local, {database})",
                         "database": args.database, "memory_efficient_import": not args.legacy_import},
        "settings": {"labeled": args.labeled, "size": args.size, "detections": args.detections,
                     "push_batch": args.push_batch, "backbone": "tiny_fpn (untrained)", "device": "cpu"},
        "runs": runs,
        "growth": {name: {**fit(sizes, [r["stages"][name]["seconds"] for r in runs]),
                          "peak_rss_mb_largest": runs[-1]["stages"][name]["peak_rss_mb"]} for name in STAGES},
        "targets": {"ratio_max": 12.0, "peak_rss_mb_max": 2048},
    }
    result["ok"] = all(r["check"]["ok"] for r in runs)
    stem = "scaling" + (f"_{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    plot(result, args.out / f"{stem}.png")
    print(table(result))
    print(f"wrote {args.out / (stem + '.json')} and .png")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
