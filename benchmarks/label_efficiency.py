"""Label efficiency: presets of ``tsp-sync simulate`` (tsp_model.simulation) for our two data sets.

    python benchmarks/label_efficiency.py --dataset phantom_series --size cpu
    python benchmarks/label_efficiency.py --dataset nuclei --size cpu --regime warm
    python benchmarks/label_efficiency.py --dataset phantom_series --size gpu --device cuda

Everything that matters (oracle, splits, arms, design choices on the validation split, seeds,
resuming, table, JSON, PNG) lives in :mod:`tsp_model.simulation`; this file only makes the data
and picks sizes.

Data sets:

- ``phantom_series``: consecutive slices through simulated heads (tsp_model.synth.phantom
  ``generate_series``): the pool holds near-duplicates as real CT does. Pool and validation come
  from one set of heads (split by series), the test set from other heads (disjoint series ids).
- ``phantoms``: independent phantom slices (no near-duplicates), pool and test from different
  seeds.
- ``nuclei``: /work/shared/data (see its README): BBBC007 images, each windowed to its own
  0.5-99.5 intensity percentiles, tiled into non-overlapping crops (label value > 0 = one nucleus,
  pieces under 8 px at crop borders dropped); pool and validation split by source image, the test
  images are NUCLEI_TEST_IMAGES (one per acquisition folder); the DSB2018 image, tiled the same
  way, is an extra test set ("test_dsb2018").

Regimes: ``scratch`` (every model from random initialization), ``warm`` (every cycle's model
starts from a checkpoint trained on the *other* data set's full pool: phantoms for nuclei and
nuclei for phantoms, standing in for the ImageNet/COCO weights a GPU server loads; made once and
cached) and ``pretrained`` (every model from a backbone pretrained with SimSiam on the pool's own
slices, labels unread: ``tsp-sync pretrain``; issue 26). The warm regime reuses the scratch run's
validation choices when its JSON exists; the pretrained regime keeps its model, S_i and display
choices and chooses the clusters and TypiClust's embedding again (:func:`scratch_design`).

Sizes: ``smoke`` (minutes; tests), ``cpu`` (the discriminating CPU size: 3 seeds of the default
arms in about 90 minutes on a quiet 2-core machine), ``gpu`` (R50-FPN, see GPU_NOTE).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
SHARED_DATA = Path("/work/shared/data")
# One BBBC007 image per acquisition folder is held out for testing (split by source image).
NUCLEI_TEST_IMAGES = ("A9/A9_p9d", "f9620/20P1_POS0011_D_1UL", "f96_17/17P1_POS0014_D_1UL")

ARMS = {
    # issue #23: the queue Label Studio serves (tsp_diverse), plain TSP, the baselines, pseudo labels
    # and their control (+pseudo0: the same batches with beta = 0), the ceiling
    "default": ["random", "class_entropy", "tsp", "tsp_diverse", "tsp+pseudo", "tsp+pseudo0",
                "tsp_diverse+pseudo", "full"],
    "warm": ["random", "class_entropy", "tsp", "tsp+pseudo", "tsp_diverse", "tsp_diverse+pseudo", "full"],
    # issue #26: every model from a backbone pretrained on the pool (SimSiam); the cold start with
    # TypiClust on the chosen embedding
    "pretrained": ["random", "tsp", "tsp_diverse", "tsp_diverse+typiclust", "full"],
}
# issue #23: BatchNorm or GroupNorm from scratch, and the mask threshold of m and of every mask
MODEL_CANDIDATES = [{"norm": n, "mask_threshold": t} for t in (0.3, 0.5) for n in ("batch", "group")]

# data: per data set and size; settings: SimulationSettings fields
SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "phantom_series": dict(series=16, slices=6, test_series=4, image_size=64, budget=4),
        "phantoms": dict(pool=40, test=20, image_size=64, budget=4),
        "nuclei": dict(tile=64, budget=4),
        "settings": dict(cycles=2, seeds=[0], image_steps=40, min_epochs=2, batch_size=2, threads=1,
                         score_thresholds=[0.3, 0.5], empty_rules=["max_c"], show_thresholds=[0.3, 0.5]),
    },
    "cpu": {
        "phantom_series": dict(series=48, slices=10, test_series=16, image_size=128, budget=20),
        "phantoms": dict(pool=480, test=160, image_size=128, budget=20),
        "nuclei": dict(tile=64, budget=3),  # 3 tiles: M_1 ~0.73 mask AP50 vs ~0.94 with all 435
        # 1 torch thread: on 2 shared cores two OpenMP threads ran a training step 10x slower
        "settings": dict(cycles=3, seeds=[0, 1, 2], image_steps=1000, min_epochs=6, batch_size=2,
                         lr=0.02, warmup_iters=50, threads=1, model_candidates=MODEL_CANDIDATES, pretrain_epochs=60,
                         tune_candidates=[[0.3, "max_c"], [0.5, "max_c"], [0.7, "max_c"], [0.5, "constant"]]),
    },
    "gpu": {
        "phantom_series": dict(series=200, slices=16, test_series=40, image_size=512, budget=100),
        "phantoms": dict(pool=3000, test=600, image_size=512, budget=100),
        "nuclei": dict(tile=128, budget=20),
        "settings": dict(cycles=4, seeds=[0, 1, 2], backbone="resnet50_fpn", image_steps=6000,
                         min_epochs=2, batch_size=8, lr=0.02, warmup_iters=100, amp=True, workers=8),
    },
}
GPU_NOTE = ("gpu size, estimated and not measured (no GPU was lent when this was written): per seed about "
            "2 + 8 x 3 + 1 + 8 = 35 models of 6,000 image-steps of R50-FPN at 512 px (~40 img/s on one H100: "
            "~2.5 min each) plus pool scoring (3,200 images at ~150 img/s): about 100 minutes per seed.")


# --------------------------------------------------------------------------- data sets
def phantom_series_data(size: dict[str, Any], cache: Path, seed: int = 0) -> tuple[Path, Path]:
    """(pool+validation COCO, test COCO) of phantom series; test heads never share an id."""
    from tsp_model.synth.phantom import generate_series

    root = cache / "data" / f"phantom_series_{size['image_size']}px_s{size['series']}x{size['slices']}_seed{seed}"
    pool = root / "pool" / "annotations.json"
    test = root / "test" / "annotations.json"
    if not pool.exists():
        generate_series(pool.parent, size["series"], slices=size["slices"], size=size["image_size"], seed=seed)
    if not test.exists():
        generate_series(test.parent, size["test_series"], slices=size["slices"], size=size["image_size"], seed=seed,
                        first_series=100_000)
    return pool, test


def phantoms_data(size: dict[str, Any], cache: Path, seed: int = 0) -> tuple[Path, Path]:
    from tsp_model.synth.phantom import generate_phantoms

    root = cache / "data" / f"phantoms_{size['image_size']}px_seed{seed}"
    pool = root / f"pool_{size['pool']}" / "annotations.json"
    test = root / f"test_{size['test']}" / "annotations.json"
    if not pool.exists():
        generate_phantoms(pool.parent, size["pool"], size=size["image_size"], seed=seed)
    if not test.exists():  # a different seed: the test slices are drawn independently of the pool
        generate_phantoms(test.parent, size["test"], size=size["image_size"], seed=seed + 10_000)
    return pool, test


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Window a source image to its own 0.5-99.5 percentiles, once for all its tiles (BBBC007 is
    dim 8-bit, DSB2018 16-bit: one rule gives both the same contrast)."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    return (np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).round().astype(np.uint8)


def tile_instances(image: np.ndarray, labels: np.ndarray, tile: int, min_area: int = 8
                   ) -> list[tuple[int, int, np.ndarray, list[np.ndarray]]]:
    """Non-overlapping ``tile`` x ``tile`` crops: ``(y, x, image crop, [bool masks])``; each label
    value > 0 inside a crop is one instance, pieces under ``min_area`` pixels are dropped."""
    out = []
    h, w = labels.shape
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            lab = labels[y : y + tile, x : x + tile]
            masks = [lab == v for v in np.unique(lab) if v != 0 and (lab == v).sum() >= min_area]
            out.append((y, x, image[y : y + tile, x : x + tile], masks))
    return out


def _write_tiles(out_dir: Path, sources: Sequence[tuple[str, Path, Path]], tile: int) -> Path:
    import tifffile
    from PIL import Image

    from tsp_model.core.rle import rle_for_json
    from tsp_model.data.coco_file import write_coco

    images, anns = [], []
    for name, img_path, lab_path in sources:
        img = _to_uint8(np.asarray(tifffile.imread(img_path)))
        lab = np.asarray(tifffile.imread(lab_path))
        if img.ndim == 3:  # keep one channel: the nuclei stain
            img = img[..., 0] if img.shape[-1] <= 4 else img[0]
        if img.shape != lab.shape:
            raise SystemExit(f"{img_path}: image {img.shape} and labels {lab.shape} differ in size")
        for y, x, crop, masks in tile_instances(img, lab, tile):
            image_id = len(images) + 1
            file_name = f"images/{name.replace('/', '_')}_y{y}_x{x}.png"
            (out_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(crop)).save(out_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": tile, "height": tile, "source": name})
            for m in masks:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                             "segmentation": rle_for_json(rle),
                             "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return write_coco(out_dir / "annotations.json", images, anns, [{"id": 1, "name": "nucleus"}])


def nuclei_data(size: dict[str, Any], cache: Path, data_root: Path = SHARED_DATA) -> tuple[Path, Path, dict[str, tuple[Path, Path]]]:
    bbbc = data_root / "bbbc007"
    if not bbbc.is_dir():
        raise SystemExit(f"{bbbc}: BBBC007 images not found; see /work/shared/data/README.md")
    sources = []
    for lab in sorted(bbbc.glob("*/*_labels.tif")):
        img = lab.with_name(lab.name.replace("_labels.tif", ".tif"))
        sources.append((f"{lab.parent.name}/{img.stem}", img, lab))
    t = size["tile"]
    root = cache / "data" / f"nuclei_{t}px"
    pool, test, dsb = (root / n / "annotations.json" for n in ("pool", "test", "test_dsb2018"))
    if not pool.exists():
        _write_tiles(pool.parent, [x for x in sources if x[0] not in NUCLEI_TEST_IMAGES], t)
    if not test.exists():
        _write_tiles(test.parent, [x for x in sources if x[0] in NUCLEI_TEST_IMAGES], t)
    dsb_dir = data_root / "dsb2018_stardist"
    if not dsb.exists() and (dsb_dir / "img2d.tif").exists():
        _write_tiles(dsb.parent, [("dsb2018/img2d", dsb_dir / "img2d.tif", dsb_dir / "mask2d.tif")], t)
    extra = {"test_dsb2018": (dsb, dsb.parent)} if dsb.exists() else {}
    return pool, test, extra


# --------------------------------------------------------------------------- the preset
def settings_for(dataset: str, size: str, regime: str, **overrides: Any):
    from tsp_model.simulation import SimulationSettings

    preset = SIZES[size]
    values: dict[str, Any] = dict(preset["settings"])
    values["arms"] = list(ARMS[regime if regime in ("warm", "pretrained") else "default"])
    data = preset[dataset]
    values["image_size"] = data.get("image_size", data.get("tile"))
    values["budget"] = data["budget"]
    if dataset != "phantoms":  # groups exist: series (phantoms) or source images (nuclei)
        values["cluster_sources"] = ["embedding", "group"]
    if regime == "pretrained":
        values.update(pretrain=True, cluster_sources=["embedding", "pretrained"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SimulationSettings(**values)


def scratch_design(dataset: str, size: str) -> dict[str, Any]:
    """The pretrained regime keeps the scratch run's validation choices (model, S_i, display) as
    its only candidates, so the two runs differ by the pretrained backbone; what the pretrained
    embedding may change (clusters, TypiClust's embedding) is chosen again on the validation split."""
    scratch = RESULTS / f"label_efficiency_{dataset}_{size}_scratch" / "simulation.json"
    if not scratch.is_file():
        return {}
    chosen = json.loads(scratch.read_text())["chosen"]
    return {"model_candidates": [{"norm": chosen["norm"], "mask_threshold": chosen["mask_threshold"]}],
            "tune_candidates": [[chosen["score_threshold"], chosen["empty_image_rule"]]],
            "show_thresholds": [chosen["show_threshold"]]}


def source_checkpoint(dataset: str, size: str, cache: Path, device: str, threads: int | None) -> Path:
    """The warm-start source: a model trained on the OTHER data set's whole pool (cached)."""
    from tsp_model.core.config import TSPConfig
    from tsp_model.data.coco import CocoInstanceDataset
    from tsp_model.engine.train import train

    other = "nuclei" if dataset.startswith("phantom") else "phantom_series"
    out = cache / "sources" / f"{other}_{size}.pt"
    if out.exists():
        return out
    s = settings_for(other, size, "scratch", device=device)
    pool, _ = _data(other, size, cache)[:2]
    ds = CocoInstanceDataset(pool, train=True)
    cfg: TSPConfig = s.config(0)
    cfg.train.epochs = s.epochs_for(len(ds)) * 2
    if threads:
        import torch

        torch.set_num_threads(threads)
    logging.getLogger("label_efficiency").warning("training the warm-start source on %s (%d images, %d epochs)",
                                                  other, len(ds), cfg.train.epochs)
    return train(cfg, ds, out_path=out, class_names=ds.class_names, resume=True)


def _data(dataset: str, size: str, cache: Path) -> tuple[Path, Path, dict[str, tuple[Path, Path]]]:
    preset = SIZES[size]
    if dataset == "phantom_series":
        return (*phantom_series_data(preset["phantom_series"], cache), {})
    if dataset == "phantoms":
        return (*phantoms_data(preset["phantoms"], cache), {})
    if dataset == "nuclei":
        return nuclei_data(preset["nuclei"], cache)
    raise SystemExit(f"--dataset: {dataset!r} is not one of phantom_series, phantoms, nuclei")


def main(argv: list[str] | None = None) -> int:
    from tsp_model.simulation import run_simulation
    from tsp_model.simulation.data import load_simulation_data
    from tsp_model.simulation.results import format_table

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["phantom_series", "phantoms", "nuclei"], default="phantom_series")
    p.add_argument("--size", choices=list(SIZES), default="smoke")
    p.add_argument("--regime", choices=["scratch", "warm", "pretrained"], default="scratch")
    p.add_argument("--arms", help="comma list (default: the preset's)")
    p.add_argument("--seeds", help="comma list of seeds")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, help="result folder (default benchmarks/results/label_efficiency_<dataset>_<size>_<regime>)")
    p.add_argument("--restart", action="store_true", help="discard finished models of an earlier run in --out's work folder")
    p.add_argument("--design-only", action="store_true",
                   help="choose the design on the validation split (all --seeds) and stop; later runs in the same "
                        "folder, e.g. one process per seed, reuse it")
    p.add_argument("--design-from", type=Path, help="reuse another run's design (its folder or simulation.json)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("tsp_model").setLevel(logging.WARNING)
    overrides: dict[str, Any] = dict(device=args.device, threads=args.threads)
    if args.arms:
        overrides["arms"] = args.arms.split(",")
    if args.seeds:
        overrides["seeds"] = [int(v) for v in args.seeds.split(",")]
    name = f"label_efficiency_{args.dataset}_{args.size}_{args.regime}"
    results = args.out or RESULTS / name
    if args.design_from:
        overrides["design_from"] = str(args.design_from)
    if args.regime == "pretrained":
        overrides.update(scratch_design(args.dataset, args.size))
    if args.regime == "warm":
        overrides["init"] = str(source_checkpoint(args.dataset, args.size, CACHE, args.device, args.threads))
        scratch = RESULTS / f"label_efficiency_{args.dataset}_{args.size}_scratch" / "simulation.json"
        if scratch.is_file() and not args.design_from:  # the scratch run's validation choices hold here
            overrides["design_from"] = str(scratch)
    settings = settings_for(args.dataset, args.size, args.regime, **overrides)
    pool, test, extra = _data(args.dataset, args.size, CACHE)
    data, _ = load_simulation_data(pool, None, settings, test_coco=test, extra_tests=extra)
    data.description["name"] = args.dataset
    doc = run_simulation(data, settings, CACHE / "runs" / name, title=f"{args.dataset} ({args.size})",
                         regime=args.regime, progress=not args.quiet, restart=args.restart,
                         design_only=args.design_only)
    if args.design_only:
        print(f"design: {json.dumps(doc['chosen'])} ({CACHE / 'runs' / name / 'design.json'})")
        return 0
    results.mkdir(parents=True, exist_ok=True)
    before = RESULTS / f"calibration_before_{args.dataset}.json"
    if args.regime == "scratch" and before.is_file():
        # issue 23: the calibration of the code before the fixes (benchmarks/calibration.py), beside this run's
        doc["calibration_before"] = json.loads(before.read_text())
        (CACHE / "runs" / name / "simulation.json").write_text(json.dumps(doc, indent=1) + "\n")
    for ext in ("json", "png", "txt"):
        (results / f"simulation.{ext}").write_bytes((CACHE / "runs" / name / f"simulation.{ext}").read_bytes())
    print(format_table(doc))
    print(f"wrote {results}/simulation.json, .png, .txt")
    return 0 if doc["oracle_ok"] and not doc["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
