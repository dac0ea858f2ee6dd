"""The replay: Algorithm 1 with an oracle, for every arm and seed, resumable.

Protocol (the same for every arm, so differences are the strategies'):

- one group-aware split (:mod:`tsp_model.simulation.splits`) with ``split_seed``: pool,
  validation (design choices only) and test (reported only); or a given test set;
- cycle 1 selects ``b`` images without a model (random with seed ``seed + 1``, or TypiClust for
  arms marked ``+typiclust``); its model M_1 is trained once per seed (and model variant) and
  shared by the arms that start the same way;
- every later cycle trains M_k from scratch with the same initialization (``train.seed = seed``;
  with ``init``, every cycle starts from that checkpoint's matching weights: the warm-start
  regime), schedule ``epochs = max(min_epochs, ceil(image_steps / labeled))`` with lr x0.1 at
  90% and 98%: a model sees about the same number of labeled images whatever the labeled count;
- design choices are made on the validation split (``tune``): the scoring threshold and the
  empty-image rule of S_i by the validation mAP of a cycle-2 ``tsp`` model trained on each
  candidate's selection from the same M_1; the display threshold by the F1 of M_1's shown
  regions on the validation images; the clustering of ``tsp_diverse`` the same way as the
  scoring design. The chosen values then hold for every arm;
- metric: COCO mAP@0.5 of masks (and boxes) on the test set(s).

Every finished model is a line in ``<out>/ledger.jsonl`` (and its checkpoint stays until its arm
no longer needs it): a killed run started again with the same settings repeats no finished
model, and continues an interrupted training from its last finished epoch.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tsp_model.atomic import atomic_write_text
from tsp_model.config import ActiveConfig, TSPConfig
from tsp_model.cycle import run_cycle
from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.engine import distributed as du
from tsp_model.engine.checkpoint import load_model
from tsp_model.engine.evaluate import evaluate
from tsp_model.engine.predict import PoolDataset, predict_images, score_pool
from tsp_model.records import read_jsonl, rescore
from tsp_model.scoring import EMPTY_IMAGE_RULES
from tsp_model.simulation.oracle import Oracle, OracleLeak, ground_truth, match_instances, pseudo_label_precision, threshold_stats
from tsp_model.simulation.results import (
    CEILING_FRACTION,
    FULL,
    format_table,
    labels_to_fraction_of_full,
    paired_differences,
    plot,
    summarize,
)
from tsp_model.simulation.splits import Split, group_split
from tsp_model.strategies import available_strategies, get_strategy

log = logging.getLogger(__name__)

__all__ = [
    "Arm",
    "DEFAULT_ARMS",
    "SimulationData",
    "SimulationError",
    "SimulationSettings",
    "load_simulation_data",
    "parse_arms",
    "run_simulation",
]

SCHEMA = "tsp-simulation/1"
DEFAULT_ARMS = ["random", "class_entropy", "tsp", "tsp+pseudo", "tsp_instance", "tsp_diverse",
                "tsp_diverse+pseudo", FULL]
CLUSTER_SOURCES = ("embedding", "group")


class SimulationError(ValueError):
    """The data or the settings cannot be replayed; the message is one line naming the problem."""


# --------------------------------------------------------------------------- settings
@dataclass
class SimulationSettings:
    """One replay's settings (all of it is written to the result JSON)."""

    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget: int = 10  # b, images labeled per cycle
    cycles: int = 3  # K
    backbone: str = "tiny_fpn"
    norm: str = "batch"
    image_size: int = 128
    init: str | None = None  # warm start: a checkpoint whose matching weights start every model
    weights_backbone: str | None = None
    image_steps: int = 400  # labeled images seen per model
    min_epochs: int = 8
    batch_size: int = 2
    lr: float = 0.02
    warmup_iters: int = 50
    amp: bool = False
    workers: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's choice)
    validation: float = 0.15  # fraction of the images (whole groups) for design choices
    test: float = 0.2  # fraction for the test set when none is given
    split_seed: int = 0
    group_key: str | None = "auto"
    tune: bool = True
    score_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    empty_rules: list[str] = field(default_factory=lambda: ["max_c", "constant"])
    # explicit (score_threshold, empty_rule) candidates instead of the full grid of the two above
    tune_candidates: list[list[Any]] | None = None
    show_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    cluster_sources: list[str] = field(default_factory=lambda: ["embedding"])
    # without tuning (or a value never tuned): these hold
    score_threshold: float | None = None
    empty_image_rule: str | None = None
    show_threshold: float | None = None
    cluster_source: str = "embedding"
    keep_checkpoints: bool = False
    # +pseudo arms: this share of every batch is pseudo-labeled and an epoch is one pass over the
    # labeled images (train.pseudo_fraction), so a +pseudo model sees the labeled images as often
    # as its arm without pseudo labels; a --config TOML's train.pseudo_fraction wins
    pseudo_fraction: float | None = 0.5

    def config(self, seed: int, base: TSPConfig | None = None, model_overrides: dict[str, Any] | None = None) -> TSPConfig:
        """The TSPConfig of one model: ``base`` (or the defaults) with this replay's settings."""
        cfg = TSPConfig.from_dict(base.to_dict()) if base is not None else TSPConfig()
        m, t, a, s = cfg.model, cfg.train, cfg.active, cfg.score
        m.backbone, m.norm, m.weights_backbone = self.backbone, self.norm, self.weights_backbone  # type: ignore[assignment]
        m.min_size = m.max_size = self.image_size
        if self.init:
            m.weights = self.init  # every model starts from the source checkpoint's matching tensors
        t.batch_size, t.lr, t.warmup_iters, t.amp = self.batch_size, self.lr, self.warmup_iters, self.amp
        t.lr_steps, t.lr_steps_unit = [0.9, 0.98], "fraction"  # the paper's 45/50 and 49/50
        t.workers, t.device, t.seed, t.log_every = self.workers, self.device, seed, 50
        if t.pseudo_fraction is None:
            t.pseudo_fraction = self.pseudo_fraction
        a.budget = self.budget
        if self.score_threshold is not None:
            a.score_threshold = self.score_threshold
        if self.empty_image_rule is not None:
            a.empty_image_rule = self.empty_image_rule  # type: ignore[assignment]
        if self.show_threshold is not None:
            a.show_threshold = self.show_threshold
        for key, value in (model_overrides or {}).items():
            setattr(m, key, value)
        s.batch_size, s.workers, s.amp = max(self.batch_size, 4), self.workers, self.amp
        return cfg

    def epochs_for(self, labeled: int) -> int:
        return max(self.min_epochs, math.ceil(self.image_steps / max(labeled, 1)))

    def check(self) -> None:
        if self.budget < 1 or self.cycles < 1 or not self.seeds:
            raise SimulationError("simulate: budget and cycles must be >= 1 and at least one seed given")
        for rule in [*self.empty_rules, *(r for _, r in (self.tune_candidates or []))]:
            if rule not in EMPTY_IMAGE_RULES:
                raise SimulationError(f"simulate: unknown empty-image rule {rule!r} (use {', '.join(EMPTY_IMAGE_RULES)})")
        for src in [*self.cluster_sources, self.cluster_source]:
            if src not in CLUSTER_SOURCES:
                raise SimulationError(f"simulate: unknown cluster source {src!r} (use {', '.join(CLUSTER_SOURCES)})")
        parse_arms(self.arms)


# --------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    name: str
    strategy: str | None  # None for the fully supervised ceiling
    pseudo_labels: bool
    first_batch: str = "random"


# What a strategy's model needs (strategies declare ``needs``).
MODEL_NEEDS = {"mc_dropout": {"dropout": 0.25}, "predicted_loss": {"learning_loss": True}}


def model_overrides(strategy: str) -> dict[str, Any]:
    """ModelConfig fields an arm's models need (dropout heads for mc_dropout, the loss-prediction
    module for learning_loss); {} for the others."""
    out: dict[str, Any] = {}
    for need in sorted(get_strategy(strategy).needs):
        out.update(MODEL_NEEDS.get(need, {}))
    return out


def parse_arms(names: Sequence[str]) -> list[Arm]:
    """``STRATEGY[+pseudo][+typiclust]`` / ``full`` / ``all`` -> arms; unknown names fail early.

    ``+pseudo`` adds the paper's pseudo labels (eq. 4-5); ``+typiclust`` picks cycle 1's batch
    with TypiClust instead of at random. ``all`` is the default arms plus every other
    registered strategy.
    """
    known = available_strategies()
    expanded: list[str] = []
    for name in names:
        expanded += (DEFAULT_ARMS + [s for s in known if s not in DEFAULT_ARMS]) if name == "all" else [name]
    arms: list[Arm] = []
    for name in dict.fromkeys(expanded):
        if name == FULL:
            arms.append(Arm(FULL, None, False))
            continue
        strategy, *flags = name.split("+")
        bad = [f for f in flags if f not in ("pseudo", "typiclust")]
        if bad or len(set(flags)) != len(flags):
            raise SimulationError(f"--arms: {name!r}: write STRATEGY, STRATEGY+pseudo, STRATEGY+typiclust or "
                                  "STRATEGY+pseudo+typiclust")
        if strategy not in known:
            raise SimulationError(f"--arms: unknown strategy {strategy!r}; registered: {', '.join(known)}")
        arms.append(Arm(name, strategy, "pseudo" in flags, "typiclust" if "typiclust" in flags else "random"))
    return arms


# --------------------------------------------------------------------------- data
@dataclass
class SimulationData:
    pool: CocoInstanceDataset  # train=True; the oracle's labels
    validation: CocoInstanceDataset | None  # train=False
    tests: dict[str, CocoInstanceDataset]  # "test" first
    groups: dict[int, str]  # pool and validation image id -> group
    description: dict[str, Any]


def _check_coco(path: Path, image_dir: Path, what: str) -> dict[str, Any]:
    """The COCO document, or SimulationError naming what is wrong (one line)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimulationError(f"{path}: {what} COCO file not found") from None
    except json.JSONDecodeError as exc:
        raise SimulationError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("categories"), list):
        raise SimulationError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    anns = doc.get("annotations") or []
    if not doc["images"]:
        raise SimulationError(f"{path}: no images")
    if not anns:
        raise SimulationError(f"{path}: no annotations; simulate needs a fully labeled set with instance masks")
    cat_ids = {c.get("id") for c in doc["categories"]}
    unknown = sorted({a.get("category_id") for a in anns} - cat_ids, key=str)
    if unknown:
        raise SimulationError(f"{path}: annotations use category ids {unknown[:5]} not listed in 'categories'; "
                              "add them or fix the annotations")
    no_mask = [a.get("id") for a in anns if not a.get("segmentation")]
    if no_mask:
        raise SimulationError(f"{path}: {len(no_mask)} annotations have no segmentation (e.g. id {no_mask[0]}); "
                              "simulate needs instance masks (polygons or RLE), not boxes alone")
    image_ids = {im.get("id") for im in doc["images"]}
    orphans = [a.get("id") for a in anns if a.get("image_id") not in image_ids]
    if orphans:
        raise SimulationError(f"{path}: {len(orphans)} annotations point at image ids not in 'images' (e.g. "
                              f"annotation {orphans[0]})")
    missing = [im.get("file_name") for im in doc["images"] if not (image_dir / str(im.get("file_name"))).is_file()]
    if missing:
        raise SimulationError(f"{path}: {len(missing)} of {len(doc['images'])} images are missing under {image_dir} "
                              f"(first: {missing[0]}); pass the folder the file_name entries are relative to")
    return doc


def load_simulation_data(
    coco: str | Path,
    images: str | Path | None,
    settings: SimulationSettings,
    *,
    test_coco: str | Path | None = None,
    test_images: str | Path | None = None,
    extra_tests: dict[str, tuple[Path, Path]] | None = None,
) -> tuple[SimulationData, Split]:
    """Check the COCO set(s) and split them (a given test set is used as is)."""
    coco, image_dir = Path(coco), Path(images) if images else Path(coco).parent
    doc = _check_coco(coco, image_dir, "the labeled")
    split = group_split(doc["images"], validation=settings.validation if settings.tune else 0.0,
                        test=0.0 if test_coco else settings.test, seed=settings.split_seed,
                        group_key=settings.group_key)
    try:
        full = CocoInstanceDataset(doc, image_dir, train=True)
        pool = full.subset(split.pool)
        tests: dict[str, CocoInstanceDataset] = {}
        if test_coco:
            test_coco = Path(test_coco)
            tdir = Path(test_images) if test_images else test_coco.parent
            _check_coco(test_coco, tdir, "the test")
            tests["test"] = CocoInstanceDataset(test_coco, tdir, train=False, class_names=full.class_names)
        else:
            tests["test"] = CocoInstanceDataset(doc, image_dir, train=False).subset(split.test)
        for name, (ann, idir) in (extra_tests or {}).items():
            _check_coco(ann, idir, name)
            tests[name] = CocoInstanceDataset(ann, idir, train=False, class_names=full.class_names)
        validation = (CocoInstanceDataset(doc, image_dir, train=False).subset(split.validation)
                      if split.validation else None)
    except (ValueError, KeyError) as exc:
        raise SimulationError(f"{coco}: {' '.join(str(exc).split())}") from None
    if len(pool) < settings.budget * settings.cycles:
        raise SimulationError(f"{settings.cycles} cycles x b = {settings.budget} need {settings.budget * settings.cycles} "
                              f"pool images; the pool has {len(pool)} (lower --budget or --cycles)")
    desc = {"coco": str(coco), "images": str(image_dir), "class_names": full.class_names, "split": split.describe(),
            "test_sets": {k: len(v) for k, v in tests.items()}}
    groups = {i: split.groups[i] for i in split.pool + split.validation}
    return SimulationData(pool, validation, tests, groups, desc), split


# --------------------------------------------------------------------------- the ledger
class Ledger:
    """``<out>/ledger.jsonl``: one JSON line per finished unit of work (appended, fsync'ed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill: that unit is simply redone
                    self.entries[entry["key"]] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def add(self, key: str, **data: Any) -> dict[str, Any]:
        entry = {"key": key, **data}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[key] = entry
        return entry


# --------------------------------------------------------------------------- helpers
def _evaluate(checkpoint: Path, tests: dict[str, CocoInstanceDataset], device: torch.device,
              s: SimulationSettings) -> dict[str, Any]:
    model = load_model(checkpoint, device=str(device)).model
    out = {}
    for name, ds in tests.items():
        r = evaluate(model, ds, batch_size=max(s.batch_size, 4), device=device, amp=s.amp, progress=False)
        out[name] = {k: r[k] for k in ("segm_ap50", "bbox_ap50", "segm_map", "bbox_map", "num_predictions")}
    return out


def _label_stats(pool: CocoInstanceDataset, labeled: Iterable[int], groups: dict[int, str]) -> dict[str, Any]:
    coco = pool.coco
    cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    per_class = {n: 0 for n in cats.values()}
    empty = 0
    labeled = list(labeled)
    for i in labeled:
        anns = coco.imgToAnns.get(int(i), [])
        empty += not anns
        for a in anns:
            per_class[cats[a["category_id"]]] += 1
    return {"labeled_instances": sum(per_class.values()), "labeled_empty_images": empty,
            "labeled_instances_per_class": per_class, "labeled_groups": len({groups[i] for i in labeled})}


def _row(arm: str, seed: int, cycle: int, labeled: int, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    main = metrics["test"]
    row = {"arm": arm, "seed": seed, "cycle": cycle, "labeled": labeled,
           "segm_ap50": main["segm_ap50"], "bbox_ap50": main["bbox_ap50"],
           "segm_map": main["segm_map"], "bbox_map": main["bbox_map"]}
    row.update(extra)
    row["extra_tests"] = {k: v for k, v in metrics.items() if k != "test"}
    return row


def _pool_items(ds: CocoInstanceDataset, ids: Sequence[int]) -> list[tuple[int, Path, str]]:
    return [(i, ds.image_path(ds.index_of(i)), str(ds.image_info(ds.index_of(i))["file_name"])) for i in ids]


def preannotation_cost(checkpoint: Path, dataset: CocoInstanceDataset, thresholds: Sequence[float],
                       device: torch.device, amp: bool) -> dict[str, dict[str, float]]:
    """What a radiologist would be shown on ``dataset``'s images at each display threshold t
    (regions: detections with c >= t and a non-empty mask): regions per slice, false regions
    per slice (no same-class ground truth at mask IoU >= 0.5, greedy by c), and recall (the
    share of ground-truth lesions pre-drawn)."""
    loaded = load_model(checkpoint, device=str(device))
    items = _pool_items(dataset, dataset.ids)
    records = []
    for k in range(0, len(items), 8):
        batch = [PoolDataset(items[k:k + 8])[j] for j in range(len(items[k:k + 8]))]
        batch = [b for b in batch if b is not None]
        records += predict_images(loaded.model, [b[0] for b in batch], loaded.class_names, loaded.config.active,
                                  image_ids=[b[1] for b in batch], amp=amp)
    truth = {r.image_id: ground_truth(dataset, int(r.image_id)) for r in records}
    n_gt = sum(len(t) for t in truth.values())
    out = {}
    from pycocotools import mask as mask_utils

    for t in thresholds:
        shown = total_false = matched = 0
        for r in records:
            insts = sorted((i for i in r.instances if i.c >= t and i.mask is not None
                            and mask_utils.area({"size": i.mask["size"], "counts": i.mask["counts"].encode()}) > 0),
                           key=lambda i: -i.c)
            flags, hit = match_instances([(i.category, i.mask) for i in insts], truth[r.image_id])
            shown += len(insts)
            total_false += len(flags) - sum(flags)
            matched += hit
        n = max(len(records), 1)
        precision = (shown - total_false) / shown if shown else None
        recall = matched / n_gt if n_gt else None
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
        out[f"{t:g}"] = {"regions_per_slice": shown / n, "false_regions_per_slice": total_false / n,
                         "recall": recall, "precision": precision, "f1": f1}
    return out


# --------------------------------------------------------------------------- the run
def run_simulation(
    data: SimulationData,
    settings: SimulationSettings,
    out_dir: str | Path,
    *,
    base_config: TSPConfig | None = None,
    title: str | None = None,
    regime: str | None = None,
    progress: bool = True,
    restart: bool = False,
    log_cycle: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Replay every arm for every seed; write ``simulation.json`` and ``simulation.png`` in
    ``out_dir`` and return the JSON document. Resumes from ``out_dir`` unless ``restart``."""
    s = settings
    s.check()
    if s.threads:
        torch.set_num_threads(s.threads)
    out_dir = Path(out_dir)
    work = out_dir / "work"
    if restart and out_dir.exists():
        shutil.rmtree(work, ignore_errors=True)
        (out_dir / "ledger.jsonl").unlink(missing_ok=True)
    settings_doc = dataclasses.asdict(s)
    saved = out_dir / "settings.json"
    if saved.is_file() and (out_dir / "ledger.jsonl").is_file():
        before = json.loads(saved.read_text())
        # finished models are keyed by seed/arm/cycle: another arm or seed list resumes the same run
        free = ("keep_checkpoints", "threads", "device", "arms", "seeds")
        changed = sorted(k for k in before.keys() | settings_doc.keys()
                         if k not in free and before.get(k) != settings_doc.get(k))
        if changed:
            raise SimulationError(f"{out_dir} holds a run with other settings ({', '.join(changed)}); pass --restart "
                                  "to start over there, or another --out")
    atomic_write_text(saved, json.dumps(settings_doc, indent=1) + "\n")
    ledger = Ledger(out_dir / "ledger.jsonl")
    echo = log_cycle or (lambda m: log.info("%s", m))
    t_start = time.perf_counter()
    arms = parse_arms(s.arms)
    dist = du.init_distributed(s.device)
    device = dist.device
    pool_ids = list(data.pool.ids)
    al_arms = [a for a in arms if a.strategy is not None]
    starts = {(tuple(sorted(model_overrides(a.strategy).items())), a.first_batch) for a in al_arms}
    n_candidates = len(s.tune_candidates) if s.tune_candidates else len(s.score_thresholds) * len(s.empty_rules)
    n_tune = (n_candidates + (len(s.cluster_sources) if len(s.cluster_sources) > 1 else 0)) if s.tune else 0
    total = len(s.seeds) * (len(starts) + n_tune + len(al_arms) * (s.cycles - 1) + (FULL in [a.name for a in arms]))
    bar = tqdm(total=total, desc=f"simulate {title or ''}".strip(), unit="model", disable=not progress, file=sys.stderr)
    done_before = sum(1 for e in ledger.entries.values() if e.get("kind") == "model")
    bar.update(min(done_before, total))
    oracle_log: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    base = s.config(0, base_config)

    def train_cycle(key: str, cfg: TSPConfig, *, labeled: list[int], pool: list[int], oracle: Oracle,
                    prev: str | None, cycle: int, out: Path, clusters: dict[int, int] | None = None) -> dict[str, Any]:
        """One run_cycle, recorded in the ledger (or read back from it)."""
        done = ledger.get(key)
        if done is not None:  # finished before: its checkpoint stays until its seed is done
            oracle.revealed |= set(done["labeled_ids"])
            return done
        cfg.train.epochs = s.epochs_for(len(labeled) + min(s.budget, len(pool)))
        t0 = time.perf_counter()
        res = run_cycle(cfg, labeled_ids=labeled, pool_ids=pool, dataset=oracle, prev_checkpoint=prev,
                        out_dir=out, cycle_index=cycle, dist=dist, progress=False, resume=True, clusters=clusters)
        seconds = time.perf_counter() - t0
        oracle.check(res.labeled_ids)
        extra: dict[str, Any] = {}
        if res.scores_path is not None:
            records = read_jsonl(res.scores_path)
            a = cfg.active
            extra["pool_thresholds"] = threshold_stats(records, res.selected_ids, sigma_c=a.sigma_c,
                                                       sigma_b=a.sigma_b, sigma_m=a.sigma_m)
            if a.pseudo_labels:
                extra["pseudo"] = pseudo_label_precision(records, res.selected_ids, oracle, sigma_c=a.sigma_c,
                                                         sigma_b=a.sigma_b, sigma_m=a.sigma_m)
        bar.update(1)
        return ledger.add(key, kind="model", checkpoint=str(res.checkpoint), selected_ids=list(res.selected_ids),
                          labeled_ids=list(res.labeled_ids), pool_ids=list(res.pool_ids), epochs=cfg.train.epochs,
                          seconds=round(seconds, 1), pseudo_images=res.num_pseudo_images,
                          pseudo_instances=res.num_pseudo_instances, scores=str(res.scores_path or ""), **extra)

    def metrics_of(key: str, checkpoint: str, sets: dict[str, CocoInstanceDataset], what: str) -> dict[str, Any]:
        entry = ledger.get(f"{key}/{what}")
        if entry is None:
            entry = ledger.add(f"{key}/{what}", kind="metrics", metrics=_evaluate(Path(checkpoint), sets, device, s))
        return entry["metrics"]

    def ledger_measure(key: str, compute: Callable[[], Any]) -> dict[str, Any]:
        entry = ledger.get(key)
        return entry if entry is not None else ledger.add(key, kind="measurement", value=compute())

    # ---- cycle 1, once per seed and start (model variant, first-batch rule)
    def cycle1(seed: int, over: dict[str, Any], first: str) -> tuple[str, dict[str, Any]]:
        tag = "cycle1_" + first + "".join(f"_{k}{v}" for k, v in sorted(over.items()))
        key = f"seed{seed}/{tag}"
        cfg = s.config(seed, base_config, over)
        cfg.active.first_batch = first  # type: ignore[assignment]
        oracle = Oracle(data.pool)
        entry = train_cycle(key, cfg, labeled=[], pool=pool_ids, oracle=oracle, prev=None, cycle=1,
                            out=work / f"seed{seed}" / tag)
        oracle_log.append({"seed": seed, "arm": tag, "revealed": len(oracle.revealed),
                           "selected": len(entry["labeled_ids"]), "ok": oracle.revealed <= set(entry["labeled_ids"])})
        return key, entry

    # ---- design choices on the validation split
    design: dict[str, Any] = {"tuned": False}
    if s.tune and data.validation is not None:
        design = tune_on_validation(s, data, base_config, cycle1, train_cycle, metrics_of, ledger_measure, work,
                                    device, echo)
        s = dataclasses.replace(s, score_threshold=design["chosen"]["score_threshold"],
                                empty_image_rule=design["chosen"]["empty_image_rule"],
                                show_threshold=design["chosen"]["show_threshold"],
                                cluster_source=design["chosen"].get("cluster_source", s.cluster_source))
    chosen = {"score_threshold": s.config(0, base_config).active.score_threshold,
              "empty_image_rule": s.config(0, base_config).active.empty_image_rule,
              "show_threshold": s.config(0, base_config).active.show_threshold, "cluster_source": s.cluster_source}

    rows: list[dict[str, Any]] = []
    preannotation: dict[str, Any] = {}
    for seed in s.seeds:
        seed_dir = work / f"seed{seed}"
        for arm in al_arms:
            over = model_overrides(arm.strategy)
            c1_key, c1 = cycle1(seed, over, arm.first_batch)
            m1 = metrics_of(c1_key, c1["checkpoint"], data.tests, "test")
            oracle = Oracle(data.pool)
            oracle.revealed |= set(c1["labeled_ids"])
            rows.append(_row(arm.name, seed, 1, len(c1["labeled_ids"]), m1, pseudo_images=0, pseudo_instances=0,
                             pseudo_correct=None, pseudo_precision=None, epochs=c1["epochs"],
                             train_seconds=c1["seconds"], selected=c1["selected_ids"],
                             selected_groups=len({data.groups[i] for i in c1["selected_ids"]}),
                             **_label_stats(data.pool, c1["labeled_ids"], data.groups)))
            prev, labeled, pool = c1["checkpoint"], list(c1["labeled_ids"]), list(c1["pool_ids"])
            cfg = s.config(seed, base_config, over)
            cfg.active.strategy, cfg.active.pseudo_labels = arm.strategy, arm.pseudo_labels
            clusters = cluster_map(s.cluster_source, data.groups) if arm.strategy == "tsp_diverse" else None
            arm_dir = seed_dir / arm.name.replace("+", "_")
            try:
                for k in range(2, s.cycles + 1):
                    key = f"seed{seed}/{arm.name}/cycle{k}"
                    entry = train_cycle(key, cfg, labeled=labeled, pool=pool, oracle=oracle, prev=prev, cycle=k,
                                        out=arm_dir, clusters=clusters)
                    metrics = metrics_of(key, entry["checkpoint"], data.tests, "test")
                    pp = entry.get("pseudo") or {"correct": None, "precision": None}
                    rows.append(_row(arm.name, seed, k, len(entry["labeled_ids"]), metrics,
                                     pseudo_images=entry["pseudo_images"], pseudo_instances=entry["pseudo_instances"],
                                     pseudo_correct=pp["correct"], pseudo_precision=pp["precision"],
                                     epochs=entry["epochs"], train_seconds=entry["seconds"],
                                     selected=entry["selected_ids"],
                                     selected_groups=len({data.groups[i] for i in entry["selected_ids"]}),
                                     pool_thresholds=entry.get("pool_thresholds"),
                                     **_label_stats(data.pool, entry["labeled_ids"], data.groups)))
                    echo(f"{arm.name} seed {seed} cycle {k}: {len(entry['labeled_ids'])} labeled, mask AP50 "
                         f"{rows[-1]['segm_ap50']:.4f}, pseudo {entry['pseudo_instances']}")
                    if arm.name == "tsp" and k == s.cycles:
                        preannotation[f"seed{seed}"] = _preannotation_entry(
                            ledger, f"seed{seed}/preannotation", c1["checkpoint"], entry["checkpoint"], data, chosen,
                            device, s)
                    prev, labeled, pool = entry["checkpoint"], entry["labeled_ids"], entry["pool_ids"]
            except OracleLeak:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken arm must not lose the others
                log.exception("arm %s, seed %d failed", arm.name, seed)
                errors.append({"arm": arm.name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
            oracle_log.append({"seed": seed, "arm": arm.name, "revealed": len(oracle.revealed),
                               "selected": len(labeled), "peeked_for_measurement": len(oracle.peeked),
                               "ok": oracle.revealed <= set(labeled)})

        if FULL in [a.name for a in arms]:
            key = f"seed{seed}/full"
            entry = ledger.get(key)
            if entry is None:
                cfg = s.config(seed, base_config)
                cfg.train.epochs = s.epochs_for(len(pool_ids))
                from tsp_model.engine.train import train

                oracle = Oracle(data.pool)
                t0 = time.perf_counter()
                ckpt = train(cfg, oracle.reveal(pool_ids), out_path=seed_dir / "full.pt",
                             class_names=oracle.class_names, dist=dist, progress=False, resume=True)
                entry = ledger.add(key, kind="model", checkpoint=str(ckpt), epochs=cfg.train.epochs,
                                   seconds=round(time.perf_counter() - t0, 1))
                bar.update(1)
            metrics = metrics_of(key, entry["checkpoint"], data.tests, "test")
            rows.append(_row(FULL, seed, 0, len(pool_ids), metrics, pseudo_images=0, pseudo_instances=0,
                             pseudo_correct=None, pseudo_precision=None, epochs=entry["epochs"],
                             train_seconds=entry["seconds"], selected=None,
                             **_label_stats(data.pool, pool_ids, data.groups)))
            oracle_log.append({"seed": seed, "arm": FULL, "revealed": len(pool_ids), "selected": len(pool_ids),
                               "ok": True})
        if ledger.get(f"seed{seed}/done") is None:
            ledger.add(f"seed{seed}/done", kind="seed")
        if not s.keep_checkpoints:  # every model of this seed is in the ledger: its weights can go
            for entry in list(ledger.entries.values()):
                if entry.get("kind") == "model" and entry["key"].startswith(f"seed{seed}/"):
                    Path(entry["checkpoint"]).unlink(missing_ok=True)
    bar.close()

    summary = summarize(rows)
    doc = {
        "schema": SCHEMA,
        "title": title,
        "regime": regime or ("warm start from " + Path(s.init).name if s.init else "from scratch"),
        "dataset": data.description.get("name") or title or "coco",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(settings),
        "arms": {a.name: {"strategy": a.strategy, "pseudo_labels": a.pseudo_labels, "first_batch": a.first_batch}
                 for a in arms},
        "protocol": {
            "split": data.description.get("split"),
            "cycle1": "b images chosen without a model (random with seed + 1, or TypiClust for +typiclust arms), "
                      "trained once per seed and shared by the arms that start the same way",
            "init": "every cycle trains from scratch with train.seed = seed" + (f", starting from {s.init}" if s.init else ""),
            "schedule": f"epochs = max({s.min_epochs}, ceil({s.image_steps} / labeled)); lr x0.1 at 90% and 98%"
                        + ("" if base.train.pseudo_fraction is None else
                           f"; +pseudo arms: {base.train.pseudo_fraction:g} of every batch pseudo-labeled, an epoch "
                           "one pass over the labeled images"),
            "pseudo_thresholds": {"sigma_c": base.active.sigma_c, "sigma_b": base.active.sigma_b,
                                  "sigma_m": base.active.sigma_m},
            "pseudo_precision": "greedy one-to-one: same class and mask IoU >= 0.5 with an oracle instance",
            "metric": "COCO mAP@0.5 (masks: segm_ap50; boxes: bbox_ap50) on the test set",
            "design": "chosen on the validation split, never on the test set (see 'design')",
        },
        "design": design,
        "chosen": chosen,
        "data": data.description,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
                        "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
        "runs": rows,
        "summary": summary,
        "paired": paired_differences(rows, "random"),
        "labels_to_95pct_full": labels_to_fraction_of_full(summary, CEILING_FRACTION),
        "preannotation": preannotation,
        "oracle": oracle_log,
        "oracle_ok": all(o["ok"] for o in oracle_log),
        "errors": errors,
        "seconds": round(time.perf_counter() - t_start, 1),
        "seconds_all_models": round(sum(e.get("seconds", 0) for e in ledger.entries.values()), 1),
    }
    atomic_write_text(out_dir / "simulation.json", json.dumps(doc, indent=1) + "\n")
    plot(doc, out_dir / "simulation.png")
    atomic_write_text(out_dir / "simulation.txt", format_table(doc) + "\n")
    return doc


def cluster_map(source: str, groups: dict[int, str]) -> dict[int, int] | None:
    """Clusters for ``tsp_diverse``: None for ``"embedding"`` (the strategy's own k-means of the
    FPN embeddings, k = b), or the group for ``"group"`` (e.g. the series of a slice).

    Clusters *within* groups would differ from groups only when there are fewer groups than b
    (the cluster count); in a department's pool series far outnumber b, so it is not offered.
    """
    if source == "group":
        names = sorted(set(groups.values()))
        index = {g: k for k, g in enumerate(names)}
        return {i: index[g] for i, g in groups.items()}
    return None


def _preannotation_entry(ledger: Ledger, key: str, first: str, last: str, data: SimulationData,
                         chosen: dict[str, Any], device: torch.device, s: SimulationSettings) -> dict[str, Any]:
    entry = ledger.get(key)
    if entry is None:
        # before (every detection), after (the threshold chosen here) and the product's default
        thresholds = sorted({0.05, float(chosen["show_threshold"]), ActiveConfig().show_threshold})
        test = data.tests["test"]
        entry = ledger.add(key, kind="measurement", cycle1=preannotation_cost(Path(first), test, thresholds, device, s.amp),
                           last=preannotation_cost(Path(last), test, thresholds, device, s.amp),
                           before_threshold=0.05, after_threshold=float(chosen["show_threshold"]))
    return {k: entry[k] for k in ("cycle1", "last", "before_threshold", "after_threshold")}


def tune_on_validation(s: SimulationSettings, data: SimulationData, base_config: TSPConfig | None,
                       cycle1: Callable, train_cycle: Callable, metrics_of: Callable, ledger_measure: Callable,
                       work: Path, device: torch.device, echo: Callable[[str], None]) -> dict[str, Any]:
    """The design choices of S_i, the display and the clusters, on the validation split only.

    For every seed: M_1 (random first batch) scores the pool once; each candidate (scoring
    threshold x empty-image rule) re-derives S_i from that score file (no new inference),
    selects b images with ``tsp`` and trains a cycle-2 model, scored by mask mAP@0.5 on the
    validation images. The candidate with the best mean over seeds wins (ties: the earlier in
    the grid). The display threshold maximizes the mean F1 of M_1's shown regions on the
    validation images. With several ``cluster_sources``, ``tsp_diverse`` cycle-2 models under
    the chosen S_i pick the clustering the same way.
    """
    val = {"validation": data.validation}
    pool_ids = list(data.pool.ids)
    per_seed: dict[str, Any] = {}
    candidates = ([(float(t), str(r)) for t, r in s.tune_candidates] if s.tune_candidates
                  else [(t, r) for r in s.empty_rules for t in s.score_thresholds])
    scores: dict[tuple[float, str], list[float]] = {c: [] for c in candidates}
    f1s: dict[float, list[float]] = {t: [] for t in s.show_thresholds}
    cluster_scores: dict[str, list[float]] = {c: [] for c in s.cluster_sources}
    for seed in s.seeds:
        c1_key, c1 = cycle1(seed, {}, "random")
        seed_doc: dict[str, Any] = {"cycle1": metrics_of(c1_key, c1["checkpoint"], val, "validation")["validation"]}
        # the pool scored once by M_1, with every detection kept
        scores_path = work / f"seed{seed}" / "tune" / "pool_scores.jsonl"
        if not scores_path.is_file():
            cfg = s.config(seed, base_config)
            loaded = load_model(c1["checkpoint"], device=str(device))
            score_pool(loaded.model, _pool_items(data.pool, c1["pool_ids"]), class_names=loaded.class_names,
                       config=cfg, out_path=scores_path, model_version=loaded.model_version, progress=False)
        records = read_jsonl(scores_path)
        for t, rule in candidates:
            cfg = s.config(seed, base_config)
            cfg.active.score_threshold, cfg.active.empty_image_rule, cfg.active.strategy = t, rule, "tsp"  # type: ignore[assignment]
            cfg.active.pseudo_labels = False
            key = f"seed{seed}/tune/tsp_t{t:g}_{rule}"
            entry = ledger_selection(key, records, cfg, c1, data, train_cycle, work, seed)
            m = metrics_of(key, entry["checkpoint"], val, "validation")["validation"]["segm_ap50"]
            scores[(t, rule)].append(m)
            seed_doc[f"t{t:g}_{rule}"] = {"segm_ap50": m, "selected_groups": len({data.groups[i] for i in entry["selected_ids"]})}
        display = ledger_measure(f"seed{seed}/tune/display", lambda: preannotation_cost(
            Path(c1["checkpoint"]), data.validation, s.show_thresholds, device, s.amp))
        cost = display["value"]
        for t in s.show_thresholds:
            f1s[t].append(cost[f"{t:g}"]["f1"])
        seed_doc["display"] = cost
        per_seed[f"seed{seed}"] = seed_doc
    mean = {c: float(np.mean(v)) for c, v in scores.items()}
    best = max(candidates, key=lambda c: (round(mean[c], 12), -candidates.index(c)))
    show = max(s.show_thresholds, key=lambda t: (round(float(np.mean(f1s[t])), 12), -s.show_thresholds.index(t)))
    chosen: dict[str, Any] = {"score_threshold": best[0], "empty_image_rule": best[1], "show_threshold": show}
    echo(f"validation: S_i design t={best[0]:g} rule={best[1]} (mAP50 {mean[best]:.4f}); display threshold {show:g}")
    if len(s.cluster_sources) > 1:
        for seed in s.seeds:
            _, c1 = cycle1(seed, {}, "random")
            for src in s.cluster_sources:
                cfg = s.config(seed, base_config)
                cfg.active.score_threshold, cfg.active.empty_image_rule = best  # type: ignore[assignment]
                cfg.active.strategy, cfg.active.pseudo_labels = "tsp_diverse", False
                key = f"seed{seed}/tune/tsp_diverse_{src}"
                oracle = Oracle(data.pool)
                oracle.revealed |= set(c1["labeled_ids"])
                entry = train_cycle(key, cfg, labeled=list(c1["labeled_ids"]), pool=list(c1["pool_ids"]),
                                    oracle=oracle, prev=c1["checkpoint"], cycle=2,
                                    out=work / f"seed{seed}" / "tune" / f"diverse_{src}",
                                    clusters=cluster_map(src, data.groups))
                m = metrics_of(key, entry["checkpoint"], val, "validation")["validation"]["segm_ap50"]
                cluster_scores[src].append(m)
                per_seed[f"seed{seed}"][f"tsp_diverse_{src}"] = {
                    "segm_ap50": m, "selected_groups": len({data.groups[i] for i in entry["selected_ids"]})}
        cmean = {c: float(np.mean(v)) for c, v in cluster_scores.items()}
        chosen["cluster_source"] = max(s.cluster_sources, key=lambda c: (round(cmean[c], 12), -s.cluster_sources.index(c)))
    return {
        "tuned": True,
        "split": "validation (whole groups, never in the pool or the test set)",
        "criterion": {"S_i": "mean validation mask mAP@0.5 of a cycle-2 tsp model (no pseudo labels) over seeds",
                      "display": "mean F1 of M_1's shown regions on validation (mask IoU >= 0.5, same class)",
                      "clusters": "mean validation mask mAP@0.5 of a cycle-2 tsp_diverse model"},
        "candidates": {f"t{t:g}_{r}": {"per_seed": v, "mean": mean[(t, r)]} for (t, r), v in scores.items()},
        "display_f1": {f"{t:g}": {"per_seed": v, "mean": float(np.mean(v))} for t, v in f1s.items()},
        "clusters": {c: {"per_seed": v, "mean": float(np.mean(v))} for c, v in cluster_scores.items() if v},
        "per_seed": per_seed,
        "chosen": chosen,
    }


def ledger_selection(key: str, records: list, cfg: TSPConfig, c1: dict[str, Any], data: SimulationData,
                     train_cycle: Callable, work: Path, seed: int) -> dict[str, Any]:
    """Cycle 2 of one design candidate from M_1's stored pool scores (S_i re-derived, no new
    inference): the ``tsp`` selection, then a model trained on it (through the ledger)."""
    oracle = Oracle(data.pool)
    oracle.revealed |= set(c1["labeled_ids"])
    rescored, _ = rescore(records, cfg.active)
    chosen = get_strategy("tsp", cfg.active).select(rescored, cfg.active.budget, seed=seed + 2)
    # run_cycle would score the pool again with M_1: pass the selection as a one-cycle "pool"
    # of exactly the chosen images, so it trains on labeled + chosen without new inference
    labeled = list(c1["labeled_ids"])
    return train_cycle(key, cfg, labeled=labeled, pool=list(chosen), oracle=oracle, prev=None, cycle=2,
                       out=work / f"seed{seed}" / "tune" / key.rsplit("/", 1)[-1])
