"""Design choices on the validation split, never on the test set.

Chosen once for a whole run, over all its seeds, in this order:

1. the model (``model_candidates``: norm layer, mask threshold): each candidate trains its own
   M_1 on the seed's random first batch, M_1 scores the pool, ``tsp`` selects b images under the
   default S_i design, and a cycle-2 model is trained on them; the best mean validation mask
   mAP@0.5 over seeds wins (ties: the earlier candidate);
2. S_i (scoring threshold x empty-image rule): the winner's M_1 pool scores are re-derived per
   candidate (no new inference), each selection trains a cycle-2 model, scored the same way;
3. the display threshold: the mean F1 of the winner's M_1 regions on the validation images;
4. the clusters of ``tsp_diverse`` (``cluster_sources``: the detector's embedding, the groups,
   or the pretrained backbone's embedding), like 2;
5. with ``pretrain`` and an arm starting with TypiClust: TypiClust's embedding (thumbnails or
   the pretrained backbone), by the validation mAP of the cycle-1 model on its first batch.

The result (``design.json`` in the run folder) holds every candidate's validation numbers per
seed and the ``chosen`` values; another run reuses it with ``design_from`` instead of tuning on
its own seeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tsp_model.engine.checkpoint import load_model
from tsp_model.engine.predict import score_pool
from tsp_model.core.records import read_jsonl, rescore
from tsp_model.simulation.measure import calibration_of, pool_items, preannotation_cost
from tsp_model.simulation.oracle import Oracle
from tsp_model.simulation.settings import (
    SimulationError,
    SimulationSettings,
    parse_arms,
    queue_clusters,
    variant_tag,
)
from tsp_model.al.strategies import get_strategy

if TYPE_CHECKING:
    from tsp_model.simulation.replay import Replay

__all__ = ["DESIGN_FILE", "choose_design", "load_design"]

DESIGN_FILE = "design.json"


def load_design(path: str | Path) -> dict[str, Any]:
    """The design of another run: its folder (``design.json``) or its ``simulation.json``."""
    path = Path(path)
    candidates = [path / DESIGN_FILE, path / "simulation.json"] if path.is_dir() else [path]
    for p in candidates:
        if p.is_file():
            doc = json.loads(p.read_text(encoding="utf-8"))
            design = doc.get("design", doc) if p.name == "simulation.json" else doc
            if "chosen" not in design:
                raise SimulationError(f"{p}: holds no chosen design (was that run tuned?)")
            return design
    raise SimulationError(f"--design-from {path}: no {DESIGN_FILE} or simulation.json there")


def _best(candidates: list, scores: dict[Any, list[float]]) -> Any:
    mean = {c: float(np.mean(scores[c])) for c in candidates}
    return max(candidates, key=lambda c: (round(mean[c], 12), -candidates.index(c)))


def _val_ap50(rp: Replay, key: str, checkpoint: str) -> float:
    return rp.metrics(key, checkpoint, {"validation": rp.data.validation}, "validation")["validation"]["segm_ap50"]


def _pool_scores(rp: Replay, s: SimulationSettings, seed: int, c1: dict[str, Any]) -> list:
    """M_1's score records of the pool, every detection kept (written once per seed and variant)."""
    path = rp.work / f"seed{seed}" / "tune" / variant_tag(s, rp.base_config) / "pool_scores.jsonl"
    if not path.is_file():
        cfg = s.config(seed, rp.base_config)
        loaded = load_model(c1["checkpoint"], device=str(rp.device))
        score_pool(loaded.model, pool_items(rp.data.pool, c1["pool_ids"]), class_names=loaded.class_names,
                   config=cfg, out_path=path, model_version=loaded.model_version, progress=False)
    return read_jsonl(path)


def _cycle2(rp: Replay, s: SimulationSettings, seed: int, c1: dict[str, Any], records: list, rule: tuple[float, str]
            ) -> tuple[str, dict[str, Any]]:
    """A cycle-2 ``tsp`` model (no pseudo labels) trained on the batch selected from M_1's
    stored pool scores under the S_i design ``rule`` (re-derived, no new inference)."""
    t, empty = rule
    cfg = s.config(seed, rp.base_config)
    cfg.active.score_threshold, cfg.active.empty_image_rule, cfg.active.strategy = t, empty, "tsp"  # type: ignore[assignment]
    cfg.active.pseudo_labels = False
    name = f"tsp_t{t:g}_{empty}"
    key = f"seed{seed}/tune/{variant_tag(s, rp.base_config)}/{name}"
    oracle = Oracle(rp.data.pool)
    oracle.revealed |= set(c1["labeled_ids"])
    rescored, _ = rescore(records, cfg.active)
    chosen = get_strategy("tsp", cfg.active).select(rescored, cfg.active.budget, seed=seed + 2)
    # run_cycle would score the pool again with M_1: pass the selection as a one-cycle "pool"
    # of exactly the chosen images, so it trains on labeled + chosen without new inference
    entry = rp.train_cycle(key, cfg, labeled=list(c1["labeled_ids"]), pool=list(chosen), oracle=oracle, prev=None,
                           cycle=2, out=rp.work / f"seed{seed}" / "tune" / variant_tag(s, rp.base_config) / name)
    return key, entry


def choose_design(rp: Replay) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the design document (``chosen`` included)."""
    s0 = rp.s
    groups = rp.data.groups
    default_active = s0.config(0, rp.base_config).active
    default_rule = (float(default_active.score_threshold), str(default_active.empty_image_rule))
    variants = s0.model_candidates or [{}]
    rules = ([(float(t), str(r)) for t, r in s0.tune_candidates] if s0.tune_candidates
             else [(t, r) for r in s0.empty_rules for t in s0.score_thresholds])
    per_seed: dict[str, dict[str, Any]] = {f"seed{seed}": {} for seed in s0.seeds}

    # 1. the model
    variant_scores: dict[int, list[float]] = {k: [] for k in range(len(variants))}
    variant_docs: dict[str, Any] = {}
    for k, variant in enumerate(variants):
        s = dataclasses.replace(s0, **variant)
        tag = variant_tag(s, rp.base_config)
        for seed in s0.seeds:
            c1_key, c1 = rp.cycle1(seed, s, {}, "random")
            key, entry = _cycle2(rp, s, seed, c1, _pool_scores(rp, s, seed, c1), default_rule)
            ap = _val_ap50(rp, key, entry["checkpoint"])
            variant_scores[k].append(ap)
            cfg = s.config(seed, rp.base_config)
            per_seed[f"seed{seed}"][tag] = {
                "cycle1_segm_ap50": _val_ap50(rp, c1_key, c1["checkpoint"]),
                "cycle2_segm_ap50": ap,
                "cycle2_calibration": rp.measure(f"{key}/calibration", lambda: calibration_of(
                    Path(entry["checkpoint"]), rp.data.validation, rp.device, s.amp, cfg.active))["value"],
            }
        variant_docs[tag] = {"settings": {key: getattr(s, key) for key in variant} or "as given",
                             "per_seed": variant_scores[k], "mean": float(np.mean(variant_scores[k]))}
    best_variant = variants[_best(list(range(len(variants))), variant_scores)]
    s = dataclasses.replace(s0, **best_variant)
    model_cfg = s.config(0, rp.base_config).model
    rp.echo(f"validation: model {variant_tag(s, rp.base_config)} ({len(variants)} candidate(s))")

    # 2. S_i, from the chosen model's M_1
    rule_scores: dict[tuple[float, str], list[float]] = {r: [] for r in rules}
    for seed in s0.seeds:
        _, c1 = rp.cycle1(seed, s, {}, "random")
        records = _pool_scores(rp, s, seed, c1)
        for rule in rules:
            key, entry = _cycle2(rp, s, seed, c1, records, rule)
            ap = _val_ap50(rp, key, entry["checkpoint"])
            rule_scores[rule].append(ap)
            per_seed[f"seed{seed}"][f"t{rule[0]:g}_{rule[1]}"] = {
                "segm_ap50": ap, "selected_groups": len({groups[i] for i in entry["selected_ids"]})}
    best_rule = _best(rules, rule_scores)

    # 3. the display threshold, from the chosen model's M_1
    f1s: dict[float, list[float]] = {t: [] for t in s0.show_thresholds}
    for seed in s0.seeds:
        _, c1 = rp.cycle1(seed, s, {}, "random")
        cost = rp.measure(f"seed{seed}/tune/{variant_tag(s, rp.base_config)}/display", lambda: preannotation_cost(
            Path(c1["checkpoint"]), rp.data.validation, s0.show_thresholds, rp.device, s0.amp))["value"]
        for t in s0.show_thresholds:
            f1s[t].append(cost[f"{t:g}"]["f1"])
        per_seed[f"seed{seed}"]["display"] = cost
    show = _best(list(s0.show_thresholds), f1s)
    chosen: dict[str, Any] = {"norm": model_cfg.norm, "mask_threshold": model_cfg.mask_threshold,
                              "score_threshold": best_rule[0], "empty_image_rule": best_rule[1],
                              "show_threshold": show, "cluster_source": s0.cluster_source}
    rp.echo(f"validation: S_i design t={best_rule[0]:g} rule={best_rule[1]}; display threshold {show:g}")

    # 4. the clusters of tsp_diverse
    cluster_scores: dict[str, list[float]] = {c: [] for c in s0.cluster_sources}
    if len(s0.cluster_sources) > 1:
        for seed in s0.seeds:
            _, c1 = rp.cycle1(seed, s, {}, "random")
            for src in s0.cluster_sources:
                cfg = s.config(seed, rp.base_config)
                cfg.active.score_threshold, cfg.active.empty_image_rule = best_rule  # type: ignore[assignment]
                cfg.active.strategy, cfg.active.pseudo_labels = "tsp_diverse", False
                cfg.active.cluster_source = queue_clusters(dataclasses.replace(s, cluster_source=src), "tsp_diverse")  # type: ignore[assignment]
                key = f"seed{seed}/tune/{variant_tag(s, rp.base_config)}/tsp_diverse_{src}"
                oracle = Oracle(rp.data.pool)
                oracle.revealed |= set(c1["labeled_ids"])
                entry = rp.train_cycle(key, cfg, labeled=list(c1["labeled_ids"]), pool=list(c1["pool_ids"]),
                                       oracle=oracle, prev=c1["checkpoint"], cycle=2,
                                       out=rp.work / f"seed{seed}" / "tune" / f"diverse_{src}")
                ap = _val_ap50(rp, key, entry["checkpoint"])
                cluster_scores[src].append(ap)
                per_seed[f"seed{seed}"][f"tsp_diverse_{src}"] = {
                    "segm_ap50": ap, "selected_groups": len({groups[i] for i in entry["selected_ids"]})}
        chosen["cluster_source"] = _best(list(s0.cluster_sources), cluster_scores)

    # 5. TypiClust's embedding, when an arm starts with TypiClust and the backbone is pretrained
    typiclust_scores: dict[str, list[float]] = {}
    if s0.pretrain and any(a.first_batch == "typiclust" for a in parse_arms(s0.arms)):
        for emb in s0.typiclust_embeddings:
            for seed in s0.seeds:
                key, c1 = rp.cycle1(seed, dataclasses.replace(s, typiclust_embedding=emb), {}, "typiclust")
                ap = _val_ap50(rp, key, c1["checkpoint"])
                typiclust_scores.setdefault(emb, []).append(ap)
                per_seed[f"seed{seed}"][f"typiclust_{emb}"] = {"cycle1_segm_ap50": ap}
        chosen["typiclust_embedding"] = _best(list(typiclust_scores), typiclust_scores)
    return {
        "tuned": True,
        "seeds": list(s0.seeds),
        "split": "validation (whole groups, never in the pool or the test set)",
        "criterion": {
            "model": "mean validation mask mAP@0.5 of a cycle-2 tsp model (no pseudo labels) over seeds, each "
                     "candidate with its own M_1, under the default S_i design",
            "S_i": "mean validation mask mAP@0.5 of a cycle-2 tsp model (no pseudo labels) over seeds",
            "display": "mean F1 of M_1's shown regions on validation (mask IoU >= 0.5, same class)",
            "clusters": "mean validation mask mAP@0.5 of a cycle-2 tsp_diverse model",
            "typiclust": "mean validation mask mAP@0.5 of the cycle-1 model on TypiClust's first batch"},
        "models": variant_docs,
        "candidates": {f"t{t:g}_{r}": {"per_seed": v, "mean": float(np.mean(v))} for (t, r), v in rule_scores.items()},
        "display_f1": {f"{t:g}": {"per_seed": v, "mean": float(np.mean(v))} for t, v in f1s.items()},
        "clusters": {c: {"per_seed": v, "mean": float(np.mean(v))} for c, v in cluster_scores.items() if v},
        "typiclust": {e: {"per_seed": v, "mean": float(np.mean(v))} for e, v in typiclust_scores.items()},
        "per_seed": per_seed,
        "chosen": chosen,
    }
