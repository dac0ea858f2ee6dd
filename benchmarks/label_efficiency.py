"""Label efficiency: how many labels does TSP save? Algorithm 1 replayed with an oracle.

A fully labeled pool hides its labels behind an :class:`Oracle`; :func:`tsp_model.cycle.run_cycle`
reads labels only through ``dataset.subset(ids)`` (= :meth:`Oracle.reveal`), and the oracle records
every id whose labels were read. After each cycle the benchmark checks revealed ⊆ selected.

Arms (one run compares them, on the same pool, test set and seeds)::

    random           random selection, labeled images only
    class_entropy    highest mean class entropy first (section 5 baseline)
    tsp              lowest image score S first (eq. 3), labeled images only
    tsp+pseudo       the paper's method: TSP selection + pseudo labels (eq. 5)
    random+pseudo    the paper's ablation: random selection + pseudo labels
    full             ceiling: the whole pool labeled, trained with the same rule

Any registered strategy name is an arm (``NAME`` or ``NAME+pseudo``); ``--arms all`` adds every
registered strategy (e.g. mc_dropout, core_set, learning_loss when present) to the default arms.

Protocol (same for every arm):

- cycle 1 selects ``b`` random images with seed ``seed + 1`` for every strategy (Algorithm 1,
  line 4), so its model M_1 is trained once per seed and shared by all arms (once per model
  variant: mc_dropout and learning_loss need extra heads, see MODEL_NEEDS);
- every cycle trains M_k from scratch with the same initialization (``train.seed = seed``), the
  paper's policy (run_cycle's default, ``finetune=False``);
- schedule: the paper's 50 epochs with lr x0.1 at 90% and 98% is shortened to
  ``epochs = max(min_epochs, ceil(image_steps / labeled))``, so a model sees about the same
  number of labeled images whatever the labeled count (a fixed epoch count would leave 10-image
  models untrained). Pseudo-labeled images are added to the epoch as in eq. 5, so the +pseudo
  arms take more SGD steps per epoch than the active-only arms (as in the paper);
- pseudo labels use the paper's thresholds (sigma_c 0.9, sigma_b 0.9, sigma_m 0.8); their
  precision is measured against the oracle (same class and mask IoU >= 0.5 with a ground-truth
  instance). That measurement reads the oracle's labels for evaluation only, never for training;
- metric: COCO mAP@0.5 of masks and boxes on a fixed held-out test set (never in the pool).

Data sets:

- ``phantoms``: the project's head-CT phantoms (tsp_model.data.phantom), pool and test generated
  with different seeds;
- ``nuclei``: /work/shared/data (see its README): BBBC007 images, each windowed to its own
  0.5-99.5 intensity percentiles, tiled into non-overlapping 128x128 crops (label value > 0 = one
  nucleus, pieces under 8 px at crop borders dropped), split by source image (the test images
  are NUCLEI_TEST_IMAGES, one per acquisition folder); the DSB2018 image, tiled the same way, is
  an extra test set only ("test_dsb2018" in the JSON).

Sizes:

- ``--size smoke``: tiny_fpn at 128 px, pool 120, test 100, b = 10, 3 cycles, 1 seed, batch 1,
  400 labeled image-steps per model and at least 8 epochs (the ceiling: 8 x 120). Measured:
  about 10 minutes (590 s wall, 345 s CPU) for the 12 models on a 2-core CPU shared with other
  jobs (1 torch thread); ``seconds`` in the JSON has each run's time;
- ``--size full`` (GPU): R50-FPN with BatchNorm (from scratch; pass ``--weights-backbone DEFAULT``
  where torchvision's ImageNet weights are cached) at 512 px, pool 1000, test 200, b = 100,
  4 cycles (100-400 labeled), 2 seeds, 1,200 labeled image-steps per model (at least 2 epochs:
  the ceiling sees 2 x 1000), batch 8, lr 0.02, bf16. Budget, estimated and NOT measured (no GPU
  was available when this was written): per seed 1 + 5 x 3 + 1 = 17 models, about 22,000
  training images and 15,000 scored or evaluated images; at ~40 training and ~150 inference
  images/s on one H100 that is about 2 x 12 = 24 minutes, plus 2-3 minutes to generate the
  1,200 phantoms once (cached). If it runs long, drop a seed (``--seeds 0``) or an arm. The
  paper's protocol (b = 500, 6 cycles, 50 epochs per model, 8 GPUs) is far longer.

Outputs: ``benchmarks/results/label_efficiency_<dataset>_<size>.json`` (atomic) and ``.png``
(mAP vs labeled images, one line per arm, shaded ±1 std over seeds, the ceiling dashed), plus
a table on stdout. Usage::

    python benchmarks/label_efficiency.py --dataset phantoms --size smoke
    python benchmarks/label_efficiency.py --dataset nuclei --size smoke --arms random,tsp,tsp+pseudo,full
    python benchmarks/label_efficiency.py --dataset phantoms --size full --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from tqdm import tqdm

from tsp_model.config import TSPConfig
from tsp_model.cycle import run_cycle
from tsp_model.data.coco import CocoInstanceDataset, write_coco
from tsp_model.engine import distributed as du
from tsp_model.engine.checkpoint import load_model
from tsp_model.engine.evaluate import evaluate
from tsp_model.engine.train import train
from tsp_model.records import ImageScore, read_jsonl
from tsp_model.scoring import pseudo_label_keep
from tsp_model.strategies import available_strategies, get_strategy
from tsp_model.atomic import atomic_write_text

log = logging.getLogger("label_efficiency")

SCHEMA = "tsp-label-efficiency/1"
ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
SHARED_DATA = Path("/work/shared/data")
DEFAULT_ARMS = ["random", "class_entropy", "tsp", "tsp+pseudo", "random+pseudo", "full"]
FULL = "full"
CEILING_FRACTION = 0.95
# One BBBC007 image per acquisition folder is held out for testing (split by source image).
NUCLEI_TEST_IMAGES = ("A9/A9_p9d", "f9620/20P1_POS0011_D_1UL", "f96_17/17P1_POS0014_D_1UL")


# --------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """One benchmark configuration; ``SIZES`` holds the named ones."""

    dataset: str = "phantoms"
    size: str = "smoke"
    image_size: int = 128
    pool: int = 120  # phantoms only; nuclei use every training tile
    test: int = 100  # phantoms only
    budget: int = 10  # b, images labeled per cycle
    cycles: int = 3  # K
    seeds: list[int] = field(default_factory=lambda: [0])
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    backbone: str = "tiny_fpn"
    norm: str = "batch"
    weights_backbone: str | None = None
    image_steps: int = 400  # labeled images seen per model (see the module docstring)
    min_epochs: int = 8
    batch_size: int = 1
    lr: float = 0.02
    warmup_iters: int = 50
    amp: bool = False
    workers: int = 0
    device: str = "auto"
    data_seed: int = 0

    def config(self, seed: int, model_overrides: dict[str, Any] | None = None) -> TSPConfig:
        cfg = TSPConfig()
        m, t, a, s = cfg.model, cfg.train, cfg.active, cfg.score
        m.backbone, m.norm, m.weights_backbone = self.backbone, self.norm, self.weights_backbone  # type: ignore[assignment]
        m.min_size = m.max_size = self.image_size
        t.batch_size, t.lr, t.warmup_iters, t.amp = self.batch_size, self.lr, self.warmup_iters, self.amp
        t.lr_steps, t.lr_steps_unit = [0.9, 0.98], "fraction"  # the paper's 45/50 and 49/50
        t.workers, t.device, t.seed, t.log_every = self.workers, self.device, seed, 50
        a.budget = self.budget
        for key, value in (model_overrides or {}).items():
            setattr(m, key, value)
        s.batch_size, s.workers, s.amp = max(self.batch_size, 4), self.workers, self.amp
        return cfg

    def epochs_for(self, labeled: int) -> int:
        return max(self.min_epochs, math.ceil(self.image_steps / max(labeled, 1)))


SIZES: dict[str, dict[str, Any]] = {
    "smoke": {},
    "full": dict(
        image_size=512, pool=1000, test=200, budget=100, cycles=4, seeds=[0, 1],
        backbone="resnet50_fpn", norm="batch", image_steps=1200, min_epochs=2,
        batch_size=8, lr=0.02, warmup_iters=100, amp=True, workers=8,
    ),
}


def make_settings(dataset: str, size: str, **overrides: Any) -> Settings:
    if size not in SIZES:
        raise SystemExit(f"--size: {size!r} is not one of {', '.join(SIZES)}")
    values = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(dataset=dataset, size=size, **values)


# --------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    name: str
    strategy: str | None  # None for the fully supervised ceiling
    pseudo_labels: bool


# What a strategy's model needs (strategies declare ``needs``; see tsp_model.strategies).
MODEL_NEEDS = {"mc_dropout": {"dropout": 0.25}, "predicted_loss": {"learning_loss": True}}


def model_overrides(strategy: str) -> dict[str, Any]:
    """ModelConfig fields an arm's models need (dropout heads for mc_dropout, the loss-prediction
    module for learning_loss); {} for the triplet-score strategies."""
    needs = getattr(get_strategy(strategy), "needs", frozenset())
    out: dict[str, Any] = {}
    for need in sorted(needs):
        out.update(MODEL_NEEDS.get(need, {}))
    return out


def parse_arms(names: Sequence[str]) -> list[Arm]:
    """``NAME`` / ``NAME+pseudo`` / ``full`` / ``all`` -> arms; unknown strategies fail early."""
    known = available_strategies()
    expanded: list[str] = []
    for name in names:
        if name == "all":
            expanded += DEFAULT_ARMS + [s for s in known if s not in DEFAULT_ARMS]
        else:
            expanded.append(name)
    arms: list[Arm] = []
    for name in dict.fromkeys(expanded):
        if name == FULL:
            arms.append(Arm(FULL, None, False))
            continue
        strategy, _, suffix = name.partition("+")
        if suffix not in ("", "pseudo"):
            raise SystemExit(f"--arms: {name!r}: write STRATEGY or STRATEGY+pseudo")
        if strategy not in known:
            raise SystemExit(f"--arms: unknown strategy {strategy!r}; registered: {', '.join(known)}")
        arms.append(Arm(name, strategy, suffix == "pseudo"))
    return arms


# --------------------------------------------------------------------------- the oracle
class OracleLeak(AssertionError):
    """Labels of an image that was never selected were read."""


class Oracle:
    """A fully labeled pool whose labels are reachable only through :meth:`reveal`.

    Offers what :func:`run_cycle` needs: ``subset`` (= reveal), ``index_of``, ``image_path``,
    ``image_info`` (file name and size only) and ``class_names``. Every id passed to ``reveal``
    is recorded in ``revealed``. :meth:`peek_annotations` reads labels for *measurement* (pseudo
    label precision) and records them in ``peeked``, apart from ``revealed``.
    """

    def __init__(self, dataset: CocoInstanceDataset) -> None:
        self._ds = dataset
        self.class_names = list(dataset.class_names)
        self.ids = list(dataset.ids)
        self.revealed: set[int] = set()
        self.peeked: set[int] = set()
        self.reveal_calls = 0

    def reveal(self, image_ids: Iterable[int]) -> CocoInstanceDataset:
        ids = [int(i) for i in image_ids]
        self.revealed.update(ids)
        self.reveal_calls += 1
        return self._ds.subset(ids)

    subset = reveal  # run_cycle's label provider interface

    def index_of(self, image_id: int) -> int:
        return self._ds.index_of(image_id)

    def image_path(self, idx: int) -> Path:
        return self._ds.image_path(idx)

    def image_info(self, idx: int) -> dict[str, Any]:
        info = self._ds.image_info(idx)
        return {k: info[k] for k in ("id", "file_name", "width", "height") if k in info}

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, selected: Iterable[int]) -> None:
        """Raise :class:`OracleLeak` unless every revealed id is in ``selected``."""
        leaked = self.revealed - {int(i) for i in selected}
        if leaked:
            raise OracleLeak(f"labels of unselected images were read: {sorted(leaked)[:10]}")

    def peek_annotations(self, image_id: int) -> list[tuple[str, dict[str, Any]]]:
        """Ground truth (class name, RLE) of ``image_id``, for measurement only."""
        self.peeked.add(int(image_id))
        coco = self._ds.coco
        cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
        info = coco.imgs[int(image_id)]
        out = []
        for ann in coco.imgToAnns.get(int(image_id), []):
            if ann.get("iscrowd", 0) or not ann.get("segmentation"):
                continue
            rle = dict(coco.annToRLE(ann))
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
            if rle.get("size") != [info["height"], info["width"]]:
                continue
            out.append((cats[ann["category_id"]], rle))
        return out


# --------------------------------------------------------------------------- pseudo precision
def pseudo_label_precision(
    records: Sequence[ImageScore],
    selected: Iterable[Any],
    oracle: Oracle,
    *,
    sigma_c: float,
    sigma_b: float,
    sigma_m: float,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Precision of the pseudo labels of one cycle against the oracle.

    The kept instances are those :class:`~tsp_model.data.pseudo.PseudoLabelDataset` keeps: on
    pool images not selected this cycle, ``c > sigma_c and b > sigma_b and m > sigma_m`` with a
    stored mask. An instance is correct when a ground-truth instance of the same class has mask
    IoU >= ``iou`` with it. Returns ``{"kept", "correct", "precision" (None if none kept)}``.
    """
    chosen = set(selected)
    kept = correct = 0
    for rec in records:
        if rec.image_id in chosen or not rec.instances:
            continue
        keep = np.asarray(pseudo_label_keep(
            np.array([i.c for i in rec.instances]), np.array([i.b for i in rec.instances]),
            np.array([i.m for i in rec.instances]), sigma_c=sigma_c, sigma_b=sigma_b, sigma_m=sigma_m,
        ))
        insts = [inst for inst, k in zip(rec.instances, keep) if k and inst.mask is not None]
        if not insts:
            continue
        gt = oracle.peek_annotations(int(rec.image_id))
        for inst in insts:
            kept += 1
            same = [g for name, g in gt if name == inst.category]
            if not same:
                continue
            dt = dict(inst.mask)
            if isinstance(dt["counts"], str):
                dt["counts"] = dt["counts"].encode("ascii")
            ious = mask_utils.iou([dt], same, [0] * len(same))
            if np.asarray(ious).max() >= iou:
                correct += 1
    return {"kept": kept, "correct": correct, "precision": (correct / kept) if kept else None}


def threshold_stats(records: Sequence[ImageScore], selected: Iterable[Any], *, sigma_c: float,
                    sigma_b: float, sigma_m: float) -> dict[str, Any]:
    """How the predictions on the unselected pool images fare against each threshold: instances,
    how many pass c, b, m alone and all three, and the largest c, b, m seen."""
    chosen = set(selected)
    insts = [i for r in records if r.image_id not in chosen for i in r.instances]
    c = np.array([i.c for i in insts]); b = np.array([i.b for i in insts]); m = np.array([i.m for i in insts])
    return {
        "instances": len(insts),
        "pass_c": int((c > sigma_c).sum()), "pass_b": int((b > sigma_b).sum()), "pass_m": int((m > sigma_m).sum()),
        "pass_all": int(((c > sigma_c) & (b > sigma_b) & (m > sigma_m)).sum()),
        "max_c": float(c.max()) if len(insts) else None, "max_b": float(b.max()) if len(insts) else None,
        "max_m": float(m.max()) if len(insts) else None,
    }


# --------------------------------------------------------------------------- data sets
@dataclass
class BenchData:
    pool: CocoInstanceDataset  # train=True, every pool image (hidden behind an Oracle)
    tests: dict[str, CocoInstanceDataset]  # "test" first; extra test sets after it
    description: dict[str, Any]


def phantom_data(s: Settings, cache: Path) -> BenchData:
    from tsp_model.data.phantom import generate_phantoms

    root = cache / "data" / f"phantoms_{s.image_size}px_seed{s.data_seed}"
    pool_ann = root / f"pool_{s.pool}" / "annotations.json"
    test_ann = root / f"test_{s.test}" / "annotations.json"
    if not pool_ann.exists():
        generate_phantoms(pool_ann.parent, s.pool, size=s.image_size, seed=s.data_seed, progress=False)
    if not test_ann.exists():
        # a different seed: the test slices are drawn independently of the pool
        generate_phantoms(test_ann.parent, s.test, size=s.image_size, seed=s.data_seed + 10_000, progress=False)
    pool = CocoInstanceDataset(pool_ann, train=True)
    test = CocoInstanceDataset(test_ann, train=False, class_names=pool.class_names)
    return BenchData(pool, {"test": test}, {
        "name": "phantoms", "generator": "tsp_model.data.phantom.generate_phantoms",
        "image_size": s.image_size, "pool_images": len(pool), "test_images": len(test),
        "pool_seed": s.data_seed, "test_seed": s.data_seed + 10_000,
    })


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """Window a source image to its own 0.5-99.5 percentiles, once for all its tiles (BBBC007 is
    dim 8-bit, DSB2018 16-bit: one rule gives both the same contrast)."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    return (np.clip((img.astype(np.float64) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).round().astype(np.uint8)


def tile_instances(
    image: np.ndarray, labels: np.ndarray, tile: int, min_area: int = 8
) -> list[tuple[int, int, np.ndarray, list[np.ndarray]]]:
    """Non-overlapping ``tile`` x ``tile`` crops: ``(y, x, image crop, [bool masks])``.

    Each label value > 0 inside a crop is one instance; pieces smaller than ``min_area`` pixels
    (nuclei cut by the crop border) are dropped.
    """
    out = []
    h, w = labels.shape
    for y in range(0, h - tile + 1, tile):
        for x in range(0, w - tile + 1, tile):
            lab = labels[y : y + tile, x : x + tile]
            masks = []
            for v in np.unique(lab):
                if v == 0:
                    continue
                m = lab == v
                if m.sum() >= min_area:
                    masks.append(m)
            out.append((y, x, image[y : y + tile, x : x + tile], masks))
    return out


def _write_tiles(out_dir: Path, sources: Sequence[tuple[str, Path, Path]], tile: int) -> Path:
    import tifffile
    from PIL import Image

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
            images.append({"id": image_id, "file_name": file_name, "width": tile, "height": tile,
                           "source": name})
            for m in masks:
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                             "segmentation": rle, "area": float(m.sum()),
                             "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
    return write_coco(out_dir / "annotations.json", images, anns, [{"id": 1, "name": "nucleus"}])


def nuclei_data(s: Settings, cache: Path, data_root: Path = SHARED_DATA) -> BenchData:
    bbbc = data_root / "bbbc007"
    if not bbbc.is_dir():
        raise SystemExit(f"{bbbc}: BBBC007 images not found; see /work/shared/data/README.md")
    sources = []
    for lab in sorted(bbbc.glob("*/*_labels.tif")):
        img = lab.with_name(lab.name.replace("_labels.tif", ".tif"))
        sources.append((f"{lab.parent.name}/{img.stem}", img, lab))
    test_src = [x for x in sources if x[0] in NUCLEI_TEST_IMAGES]
    train_src = [x for x in sources if x[0] not in NUCLEI_TEST_IMAGES]
    t = s.image_size
    root = cache / "data" / f"nuclei_{t}px"
    pool_ann, test_ann, dsb_ann = (root / n / "annotations.json" for n in ("pool", "test", "test_dsb2018"))
    if not pool_ann.exists():
        _write_tiles(pool_ann.parent, train_src, t)
    if not test_ann.exists():
        _write_tiles(test_ann.parent, test_src, t)
    dsb = data_root / "dsb2018_stardist"
    if not dsb_ann.exists() and (dsb / "img2d.tif").exists():
        _write_tiles(dsb_ann.parent, [("dsb2018/img2d", dsb / "img2d.tif", dsb / "mask2d.tif")], t)
    pool = CocoInstanceDataset(pool_ann, train=True)
    tests = {"test": CocoInstanceDataset(test_ann, train=False, class_names=pool.class_names)}
    if dsb_ann.exists():
        tests["test_dsb2018"] = CocoInstanceDataset(dsb_ann, train=False, class_names=pool.class_names)
    return BenchData(pool, tests, {
        "name": "nuclei", "tile": t, "pool_images": len(pool),
        "pool_sources": [x[0] for x in train_src], "test_sources": [x[0] for x in test_src],
        "extra_tests": {"test_dsb2018": "DSB2018 img2d.tif (manual masks), tiled; test only"},
        "test_images": {k: len(v) for k, v in tests.items()},
    })


def load_data(s: Settings, cache: Path) -> BenchData:
    if s.dataset == "phantoms":
        return phantom_data(s, cache)
    if s.dataset == "nuclei":
        return nuclei_data(s, cache)
    raise SystemExit(f"--dataset: {s.dataset!r} is not one of phantoms, nuclei")


# --------------------------------------------------------------------------- one run
def _evaluate(checkpoint: Path, tests: dict[str, CocoInstanceDataset], device: torch.device, s: Settings) -> dict[str, Any]:
    model = load_model(checkpoint, device=str(device)).model
    out = {}
    for name, ds in tests.items():
        r = evaluate(model, ds, batch_size=max(s.batch_size, 4), device=device, amp=s.amp, progress=False)
        out[name] = {k: r[k] for k in ("segm_ap50", "bbox_ap50", "segm_map", "bbox_map", "num_predictions")}
    del model
    return out


def _label_stats(pool: CocoInstanceDataset, labeled: Iterable[int]) -> dict[str, Any]:
    """What the labeled set holds (a diagnostic of the selection; the labels are already revealed)."""
    coco = pool.coco
    cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    per_class = {n: 0 for n in cats.values()}
    empty = 0
    for i in labeled:
        anns = coco.imgToAnns.get(int(i), [])
        empty += not anns
        for a in anns:
            per_class[cats[a["category_id"]]] += 1
    return {"labeled_instances": sum(per_class.values()), "labeled_empty_images": empty,
            "labeled_instances_per_class": per_class}


def _row(arm: str, seed: int, cycle: int, labeled: int, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    main = metrics["test"]
    row = {"arm": arm, "seed": seed, "cycle": cycle, "labeled": labeled,
           "segm_ap50": main["segm_ap50"], "bbox_ap50": main["bbox_ap50"],
           "segm_map": main["segm_map"], "bbox_map": main["bbox_map"]}
    row.update(extra)
    row["extra_tests"] = {k: v for k, v in metrics.items() if k != "test"}
    return row


def run_benchmark(
    s: Settings,
    *,
    out_json: Path,
    out_png: Path | None,
    work_dir: Path,
    cache: Path = CACHE,
    keep_checkpoints: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every arm for every seed; write the JSON (and PNG); return the JSON document."""
    t_start = time.perf_counter()
    arms = parse_arms(s.arms)
    data = load_data(s, cache)
    dist = du.init_distributed(s.device)
    device = dist.device
    pool_ids = list(data.pool.ids)
    max_labeled = s.budget * s.cycles
    if max_labeled > len(pool_ids):
        raise SystemExit(f"{s.cycles} cycles x b={s.budget} need {max_labeled} pool images; the pool has {len(pool_ids)}")
    al_arms = [a for a in arms if a.strategy is not None]
    variants = {tuple(sorted(model_overrides(a.strategy).items())) for a in al_arms}
    trainings = len(s.seeds) * (len(variants) + len(al_arms) * (s.cycles - 1) + (FULL in [a.name for a in arms]))
    bar = tqdm(total=trainings, desc=f"label efficiency {s.dataset}/{s.size}", unit="model", disable=not progress, file=sys.stderr)
    rows: list[dict[str, Any]] = []
    oracle_log: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []

    for seed in s.seeds:
        seed_dir = work_dir / f"seed{seed}"
        if seed_dir.exists():
            shutil.rmtree(seed_dir)  # a run never resumes from another run's checkpoints
        cfg = s.config(seed)
        # cycle 1 is random for every arm (Algorithm 1, line 4): M_1 is trained once per seed and
        # model variant (mc_dropout and learning_loss need extra heads) and shared by the arms
        cycle1: dict[tuple, tuple[Any, dict[str, Any], float, set[int], int]] = {}

        def first_cycle(over: dict[str, Any]) -> tuple[Any, dict[str, Any], float, set[int], int]:
            key = tuple(sorted(over.items()))
            if key not in cycle1:
                c1cfg = s.config(seed, over)
                c1cfg.train.epochs = s.epochs_for(s.budget)
                shared = Oracle(data.pool)
                tag = "shared" + "".join(f"_{k}{v}" for k, v in key)
                t0 = time.perf_counter()
                c1 = run_cycle(c1cfg, labeled_ids=[], pool_ids=pool_ids, dataset=shared, prev_checkpoint=None,
                               out_dir=seed_dir / tag, cycle_index=1, dist=dist, progress=False)
                shared.check(c1.labeled_ids)
                train_s = time.perf_counter() - t0
                m1 = _evaluate(c1.checkpoint, data.tests, device, s)
                bar.update(1)
                oracle_log.append({"seed": seed, "arm": f"cycle1 ({tag})", "revealed": len(shared.revealed),
                                   "selected": len(c1.labeled_ids), "ok": shared.revealed <= set(c1.labeled_ids)})
                cycle1[key] = (c1, m1, train_s, set(shared.revealed), c1cfg.train.epochs)
            return cycle1[key]

        for arm in arms:
            if arm.strategy is None:
                continue
            over = model_overrides(arm.strategy)
            c1, m1, train_s, revealed1, epochs1 = first_cycle(over)
            oracle = Oracle(data.pool)
            oracle.revealed |= revealed1  # M_1's labels are this arm's cycle-1 labels
            rows.append(_row(arm.name, seed, 1, len(c1.labeled_ids), m1, pseudo_images=0, pseudo_instances=0,
                             pseudo_correct=None, pseudo_precision=None, epochs=epochs1,
                             train_seconds=round(train_s, 1), selected=list(c1.selected_ids),
                             **_label_stats(data.pool, c1.labeled_ids)))
            prev, labeled, pool = c1.checkpoint, list(c1.labeled_ids), list(c1.pool_ids)
            arm_cfg = s.config(seed, over)
            arm_cfg.active.strategy, arm_cfg.active.pseudo_labels = arm.strategy, arm.pseudo_labels
            arm_dir = seed_dir / arm.name.replace("+", "_")
            try:
                for k in range(2, s.cycles + 1):
                    arm_cfg.train.epochs = s.epochs_for(len(labeled) + s.budget)
                    t0 = time.perf_counter()
                    res = run_cycle(arm_cfg, labeled_ids=labeled, pool_ids=pool, dataset=oracle,
                                    prev_checkpoint=prev, out_dir=arm_dir, cycle_index=k, dist=dist, progress=False)
                    cycle_s = time.perf_counter() - t0
                    oracle.check(res.labeled_ids)
                    pp: dict[str, Any] = {"kept": res.num_pseudo_instances, "correct": None, "precision": None}
                    a = arm_cfg.active
                    th = None
                    if res.scores_path is not None:
                        th = threshold_stats(read_jsonl(res.scores_path), res.selected_ids,
                                             sigma_c=a.sigma_c, sigma_b=a.sigma_b, sigma_m=a.sigma_m)
                    if arm.pseudo_labels and res.scores_path is not None:
                        pp = pseudo_label_precision(read_jsonl(res.scores_path), res.selected_ids, oracle,
                                                    sigma_c=a.sigma_c, sigma_b=a.sigma_b, sigma_m=a.sigma_m)
                        if pp["kept"] != res.num_pseudo_instances:
                            log.warning("%s seed %d cycle %d: %d pseudo instances trained on, %d measured",
                                        arm.name, seed, k, res.num_pseudo_instances, pp["kept"])
                    metrics = _evaluate(res.checkpoint, data.tests, device, s)
                    rows.append(_row(arm.name, seed, k, len(res.labeled_ids), metrics,
                                     pseudo_images=res.num_pseudo_images, pseudo_instances=res.num_pseudo_instances,
                                     pseudo_correct=pp["correct"], pseudo_precision=pp["precision"],
                                     epochs=arm_cfg.train.epochs, train_seconds=round(cycle_s, 1),
                                     selected=list(res.selected_ids), pool_thresholds=th,
                                     **_label_stats(data.pool, res.labeled_ids)))
                    log.info("%s seed %d cycle %d: %d labeled, mask AP50 %.4f, box AP50 %.4f, pseudo %d",
                             arm.name, seed, k, len(res.labeled_ids), rows[-1]["segm_ap50"], rows[-1]["bbox_ap50"],
                             res.num_pseudo_instances)
                    if prev != c1.checkpoint and not keep_checkpoints:
                        Path(prev).unlink(missing_ok=True)
                    prev, labeled, pool = res.checkpoint, res.labeled_ids, res.pool_ids
                    bar.update(1)
            except OracleLeak:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken arm (e.g. a new strategy) must not lose the others
                log.exception("arm %s, seed %d failed", arm.name, seed)
                errors.append({"arm": arm.name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
            oracle_log.append({"seed": seed, "arm": arm.name, "revealed": len(oracle.revealed),
                               "selected": len(labeled), "peeked_for_precision": len(oracle.peeked),
                               "ok": oracle.revealed <= set(labeled)})

        if FULL in [a.name for a in arms]:
            oracle = Oracle(data.pool)
            cfg.train.epochs = s.epochs_for(len(pool_ids))
            t0 = time.perf_counter()
            ckpt = train(cfg, oracle.reveal(pool_ids), out_path=seed_dir / "full.pt",
                         class_names=oracle.class_names, dist=dist, progress=False)
            train_s = time.perf_counter() - t0
            metrics = _evaluate(ckpt, data.tests, device, s)
            rows.append(_row(FULL, seed, 0, len(pool_ids), metrics, pseudo_images=0, pseudo_instances=0,
                             pseudo_correct=None, pseudo_precision=None, epochs=cfg.train.epochs,
                             train_seconds=round(train_s, 1), selected=None, **_label_stats(data.pool, pool_ids)))
            oracle_log.append({"seed": seed, "arm": FULL, "revealed": len(oracle.revealed),
                               "selected": len(pool_ids), "ok": oracle.revealed <= set(pool_ids)})
            bar.update(1)
        if not keep_checkpoints:
            shutil.rmtree(seed_dir, ignore_errors=True)
    bar.close()

    summary = summarize(rows)
    doc = {
        "schema": SCHEMA,
        "dataset": s.dataset,
        "size": s.size,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(s),
        "arms": {a.name: {"strategy": a.strategy, "pseudo_labels": a.pseudo_labels} for a in arms},
        "protocol": {
            "init": "every cycle trains from scratch with train.seed = seed (same init for every arm)",
            "cycle1": "random b images with seed + 1, trained once per seed (and model variant) and shared by the arms",
            "schedule": f"epochs = max({s.min_epochs}, ceil({s.image_steps} / labeled)); lr x0.1 at 90% and 98%",
            "pseudo_thresholds": {"sigma_c": 0.9, "sigma_b": 0.9, "sigma_m": 0.8},
            "pseudo_precision": "same class and mask IoU >= 0.5 with an oracle instance",
            "metric": "COCO mAP@0.5 (masks: segm_ap50; boxes: bbox_ap50) on the held-out test set",
        },
        "data": data.description,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "device": str(device), "cpu_threads": torch.get_num_threads(),
                        "machine": platform.machine(), "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
        "runs": rows,
        "summary": summary,
        "labels_to_95pct_full": labels_to_fraction_of_full(summary, CEILING_FRACTION),
        "oracle": oracle_log,
        "oracle_ok": all(o["ok"] for o in oracle_log),
        "errors": errors,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_json_atomic(out_json, doc)
    if out_png is not None:
        plot(doc, out_png)
    return doc


# --------------------------------------------------------------------------- summaries
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
        prec = [r["pseudo_precision"] for r in rs if r["pseudo_precision"] is not None]
        entry["pseudo_precision_mean"] = statistics.fmean(prec) if prec else None
        extra = {}
        for name in rs[0]["extra_tests"]:
            extra[name] = {f"{key}_mean": _mean_std([r["extra_tests"][name][key] for r in rs])[0]
                           for key in ("segm_ap50", "bbox_ap50")}
        entry["extra_tests"] = extra
        out.setdefault(arm, []).append(entry)
    return out


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


def write_json_atomic(path: Path, doc: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(doc: dict[str, Any]) -> str:
    """One row per arm and cycle: labeled count, mask and box mAP@0.5 (mean ± std), pseudo labels."""
    head = f"{'arm':<16} {'cycle':>5} {'labeled':>7} {'(inst/empty)':>12}  {'mAP50 mask':>15}  {'mAP50 box':>15}  {'pseudo inst':>11}  {'pseudo prec':>11}"
    extra_names = sorted({n for es in doc["summary"].values() for e in es for n in e["extra_tests"]})
    head += "".join(f"  {n + ' mask':>18}" for n in extra_names)
    lines = [head, "-" * len(head)]
    for arm in doc["arms"]:
        for e in doc["summary"].get(arm, []):
            cyc = "ceil" if arm == FULL else str(e["cycle"])
            ie = f"{e['labeled_instances_mean']:.0f}/{e['labeled_empty_images_mean']:.0f}"
            line = (f"{arm:<16} {cyc:>5} {e['labeled']:>7} {ie:>12}  "
                    f"{_fmt(e['segm_ap50_mean'])} ± {_fmt(e['segm_ap50_std'], 3):>5}  "
                    f"{_fmt(e['bbox_ap50_mean'])} ± {_fmt(e['bbox_ap50_std'], 3):>5}  "
                    f"{e['pseudo_instances_mean']:>11.1f}  {_fmt(e['pseudo_precision_mean'], 3):>11}")
            line += "".join(f"  {_fmt(e['extra_tests'][n]['segm_ap50_mean']):>18}" for n in extra_names)
            lines.append(line)
    lt = doc["labels_to_95pct_full"]
    if lt.get("target") is not None:
        lines.append("")
        lines.append(f"labels to reach {lt['fraction']:.0%} of full supervision (mask mAP50 >= "
                     f"{lt['target']:.4f}; full = {lt['full_segm_ap50']:.4f} with {lt['full_labeled']} labels):")
        for arm, n in lt["arms"].items():
            lines.append(f"  {arm:<16} {n if n is not None else 'not reached'}")
    if doc["errors"]:
        lines.append("errors: " + "; ".join(f"{e['arm']} seed {e['seed']}: {e['error']}" for e in doc["errors"]))
    lines.append(f"oracle: revealed ⊆ selected for every arm and seed: {doc['oracle_ok']}; "
                 f"{doc['seconds']:.0f} s on {doc['environment']['device']}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], out_png: Path) -> Path:
    """Figure 2 style: mAP@0.5 vs labeled images, one line per arm, shaded ±1 std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"tsp+pseudo": dict(color="tab:red", marker="o", lw=2.2), "tsp": dict(color="tab:orange", marker="s"),
              "random+pseudo": dict(color="tab:purple", marker="^"), "random": dict(color="tab:blue", marker="v"),
              "class_entropy": dict(color="tab:green", marker="D")}
    full = doc["summary"].get(FULL, [None])[0]
    for ax, key, title in zip(axes, ("segm_ap50", "bbox_ap50"), ("mask mAP@0.5", "box mAP@0.5")):
        for i, (arm, entries) in enumerate(doc["summary"].items()):
            if arm == FULL:
                continue
            x = [e["labeled"] for e in entries]
            y = np.array([e[f"{key}_mean"] for e in entries])
            sd = np.array([e[f"{key}_std"] for e in entries])
            st = styles.get(arm, dict(color=f"C{(i + 5) % 10}", marker="x"))
            ax.plot(x, y, label=arm, **st)
            ax.fill_between(x, y - sd, y + sd, color=st["color"], alpha=0.15)
        if full is not None:
            v, sd = full[f"{key}_mean"], full[f"{key}_std"]
            ax.axhline(v, color="k", ls="--", lw=1.2, label=f"full ({full['labeled']} labeled)")
            ax.axhspan(v - sd, v + sd, color="k", alpha=0.08)
            if key == "segm_ap50":
                ax.axhline(CEILING_FRACTION * v, color="gray", ls=":", lw=1, label="95% of full")
        ax.set_xticks(sorted({e["labeled"] for a, es in doc["summary"].items() if a != FULL for e in es}))
        ax.set_xlabel("labeled images")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    n_seeds = len(doc["settings"]["seeds"])
    fig.suptitle(f"Label efficiency on {doc['dataset']} ({doc['size']} size, {n_seeds} seed{'s' if n_seeds > 1 else ''}, "
                 f"b = {doc['settings']['budget']}, {doc['settings']['backbone']} at {doc['settings']['image_size']} px)")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)
    return out_png


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["phantoms", "nuclei"], default="phantoms")
    p.add_argument("--size", choices=list(SIZES), default="smoke")
    p.add_argument("--arms", help=f"comma list (default {','.join(DEFAULT_ARMS)}); 'all' adds every registered strategy")
    p.add_argument("--seeds", help="comma list of seeds (smoke: 0; full: 0,1)")
    p.add_argument("--cycles", type=int)
    p.add_argument("--budget", type=int, help="b, images labeled per cycle")
    p.add_argument("--pool", type=int, help="phantom pool size")
    p.add_argument("--test", type=int, help="phantom test set size")
    p.add_argument("--image-steps", type=int, help="labeled images seen per model")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weights-backbone", help="torchvision weights enum name (cached) or a local file")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/label_efficiency_<dataset>_<size>.json)")
    p.add_argument("--work-dir", type=Path, help="checkpoints (default benchmarks/.cache/runs/<dataset>_<size>)")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-cycle log lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("tsp_model",):  # the engine logs every epoch; the benchmark logs every cycle
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = make_settings(
        args.dataset, args.size,
        arms=args.arms.split(",") if args.arms else None,
        seeds=[int(x) for x in args.seeds.split(",")] if args.seeds else None,
        cycles=args.cycles, budget=args.budget, pool=args.pool, test=args.test,
        image_steps=args.image_steps, batch_size=args.batch_size,
        weights_backbone=args.weights_backbone, device=args.device,
    )
    parse_arms(s.arms)  # fail before any data is written
    out = args.out or RESULTS / f"label_efficiency_{s.dataset}_{s.size}.json"
    doc = run_benchmark(s, out_json=out, out_png=out.with_suffix(".png"),
                        work_dir=args.work_dir or CACHE / "runs" / f"{s.dataset}_{s.size}",
                        keep_checkpoints=args.keep_checkpoints, progress=not args.quiet)
    print(format_table(doc))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0 if doc["oracle_ok"] and not doc["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
