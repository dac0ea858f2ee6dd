"""``run_simulation``: a whole replay in one folder: its settings checked against the folder's, the
design (chosen once, or another run's), every arm for every seed, and the result files
(``simulation.json``, ``.png``, ``.txt``)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tsp_model.core.atomic import atomic_write_text
from tsp_model.core.config import TSPConfig
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.simulation.data import SimulationData
from tsp_model.simulation.design import DESIGN_FILE, choose_design, load_design
from tsp_model.simulation.ledger import Ledger
from tsp_model.simulation.oracle import OracleLeak
from tsp_model.simulation.replay import Replay
from tsp_model.simulation.results import (
    CEILING_FRACTION,
    FULL,
    format_table,
    labels_to_fraction_of_full,
    paired_differences,
    plot,
    summarize,
)
from tsp_model.simulation.settings import SimulationError, SimulationSettings, model_overrides, parse_arms

log = logging.getLogger(__name__)

__all__ = ["SCHEMA", "run_simulation", "source_commit"]

SCHEMA = "tsp-simulation/2"


def source_commit() -> str | None:
    """The git commit of the code running (``+dirty`` with uncommitted changes to tracked files),
    or None outside a git checkout: every result records what produced it."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _check_settings(out_dir: Path, s: SimulationSettings, restart: bool) -> None:
    if restart and out_dir.exists():
        shutil.rmtree(out_dir / "work", ignore_errors=True)
        for name in ("ledger.jsonl", DESIGN_FILE):
            (out_dir / name).unlink(missing_ok=True)
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


def _design(rp: Replay, out_dir: Path) -> dict[str, Any]:
    """The run's design: another run's (``design_from``), this folder's (chosen once, by the
    first process), or chosen now on the validation split; {"tuned": False} without tuning."""
    s = rp.s
    if s.design_from is not None:
        return {**load_design(s.design_from), "from": str(s.design_from)}
    saved = out_dir / DESIGN_FILE
    if saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    if not (s.tune and rp.data.validation is not None):
        return {"tuned": False}
    design = choose_design(rp)
    atomic_write_text(saved, json.dumps(design, indent=1) + "\n")
    return design


def pretrain_norm(s: SimulationSettings) -> str:
    """The norm layer the backbone is pretrained with: the one its detectors will use, i.e. that
    of the model candidates when they all name one (a backbone pretrained with GroupNorm and
    fine-tuned with BatchNorm would start from affine weights without their statistics);
    otherwise the configured ``norm``."""
    norms = {c.get("norm", s.norm) for c in s.model_candidates or [{}]}
    return norms.pop() if len(norms) == 1 else s.norm


def _pretrain(s: SimulationSettings, data: SimulationData, out_dir: Path, base_config: TSPConfig | None,
              ledger: Ledger, progress: bool) -> dict[str, Any]:
    """The replay's pretrained backbone: SimSiam on the pool's slices (never the validation or
    test ones, whose labels stay unread anyway), once per run folder."""
    from tsp_model.engine.pretrain import pretrain

    entry = ledger.get("pretrain")
    if entry is None or not Path(entry["checkpoint"]).is_file():
        cfg = s.config(0, base_config)
        cfg.model.norm = pretrain_norm(s)  # type: ignore[assignment]
        if s.pretrain_epochs is not None:
            cfg.pretrain.epochs = s.pretrain_epochs
        cfg.pretrain.workers, cfg.pretrain.device, cfg.pretrain.amp = s.workers, s.device, s.amp
        paths = [data.pool.image_path(k) for k in range(len(data.pool))]
        t0 = time.perf_counter()
        checkpoint = pretrain(cfg, paths, out_dir / "work" / "pretrain" / "backbone.pt", progress=progress)
        from tsp_model.engine.checkpoint import load_checkpoint

        state = load_checkpoint(checkpoint)
        entry = ledger.add("pretrain", kind="pretrain", checkpoint=str(checkpoint), slices=len(paths),
                           epochs=state["epoch"], method=state["pretrain"]["method"], settings=state["pretrain"],
                           cost=state.get("cost", {}), loss=[h["loss"] for h in state["history"]],
                           seconds=round(time.perf_counter() - t0, 1))
    return {k: v for k, v in entry.items() if k != "key"}


def _apply(s: SimulationSettings, design: dict[str, Any]) -> SimulationSettings:
    chosen = design.get("chosen")
    if not chosen:
        return s
    return dataclasses.replace(
        s, norm=chosen.get("norm", s.norm), mask_threshold=chosen.get("mask_threshold", s.mask_threshold),
        score_threshold=chosen["score_threshold"], empty_image_rule=chosen["empty_image_rule"],
        show_threshold=chosen["show_threshold"], cluster_source=chosen.get("cluster_source", s.cluster_source),
        typiclust_embedding=chosen.get("typiclust_embedding", s.typiclust_embedding))


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
    design_only: bool = False,
) -> dict[str, Any]:
    """Replay every arm for every seed; write ``simulation.json``, ``.png`` and ``.txt`` in
    ``out_dir`` and return the JSON document. Resumes from ``out_dir`` unless ``restart``.
    ``design_only``: choose the design (``design.json``) and return it, training no arm."""
    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out_dir = Path(out_dir)
    _check_settings(out_dir, settings, restart)
    ledger = Ledger(out_dir / "ledger.jsonl")
    t_start = time.perf_counter()
    arms = parse_arms(settings.arms)
    al_arms = [a for a in arms if a.strategy is not None]
    s = settings
    starts = {(tuple(sorted(model_overrides(a.strategy).items())), a.first_batch) for a in al_arms}
    total = len(s.seeds) * (len(starts) + len(al_arms) * (s.cycles - 1) + (FULL in [a.name for a in arms]))
    bar = tsp_progress(total=total, desc=f"simulate {title or ''}".strip(), unit="model", enabled=progress)
    pretrained = _pretrain(s, data, out_dir, base_config, ledger, progress) if s.pretrain else None
    if pretrained is not None:
        s = dataclasses.replace(s, weights_backbone=pretrained["checkpoint"])
    rp = Replay(data, s, out_dir, base_config=base_config, ledger=ledger, bar=bar,
                echo=log_cycle or (lambda m: log.info("%s", m)))
    design = _design(rp, out_dir)
    if design_only:
        bar.close()
        return design
    rp.s = s = _apply(s, design)
    chosen = s.config(0, base_config)
    rows: list[dict[str, Any]] = []
    measured: dict[str, dict[str, Any]] = {"preannotation": {}, "calibration": {}}
    errors: list[dict[str, Any]] = []
    for seed in s.seeds:
        for arm in al_arms:
            try:
                arm_rows, extras = rp.run_arm(seed, arm)
            except OracleLeak:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken arm must not lose the others
                log.exception("arm %s, seed %d failed", arm.name, seed)
                errors.append({"arm": arm.name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                continue
            rows += arm_rows
            for name, value in extras.items():
                measured[name][f"seed{seed}"] = value
        if FULL in [a.name for a in arms]:
            rows.append(rp.run_full(seed))
        rp.finish_seed(seed)
    bar.close()

    summary = summarize(rows)
    doc = {
        "schema": SCHEMA,
        "title": title,
        "regime": regime or ("warm start from " + Path(s.init).name if s.init else "from scratch"),
        "dataset": data.description.get("name") or title or "coco",
        "commit": source_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(settings),
        "arms": {a.name: {"strategy": a.strategy, "pseudo_labels": a.pseudo_labels, "first_batch": a.first_batch,
                          "pseudo_weight": a.pseudo_weight} for a in arms},
        "protocol": {
            "split": data.description.get("split"),
            "cycle1": "b images chosen without a model (random with seed + 1, or TypiClust for +typiclust arms), "
                      "trained once per seed and shared by the arms that start the same way",
            "init": "every cycle trains from scratch with train.seed = seed" + (f", starting from {s.init}" if s.init else ""),
            "schedule": f"epochs = max({s.min_epochs}, ceil({s.image_steps} / labeled)); lr x0.1 at 90% and 98%; "
                        f"batches of {s.batch_size} labeled images; +pseudo arms add "
                        f"{chosen.train.pseudo_per_batch or s.batch_size} pseudo-labeled images to each batch (same "
                        "labeled batches, same number of steps); +pseudo0: the same batches with beta = 0",
            "pseudo_thresholds": {"sigma_c": chosen.active.sigma_c, "sigma_b": chosen.active.sigma_b,
                                  "sigma_m": chosen.active.sigma_m},
            "pseudo_precision": "greedy one-to-one: same class and mask IoU >= 0.5 with an oracle instance",
            "metric": "COCO mAP@0.5 (masks: segm_ap50; boxes: bbox_ap50) on the test set",
            "design": "chosen on the validation split, never on the test set (see 'design')",
            "calibration": "tsp arm: Spearman of c, b, m, s with each validation detection's true mask IoU (and of "
                           "b, c with its box IoU), per seed and cycle",
        },
        "design": design,
        "chosen": {"norm": chosen.model.norm, "mask_threshold": chosen.model.mask_threshold,
                   "score_threshold": chosen.active.score_threshold,
                   "empty_image_rule": chosen.active.empty_image_rule,
                   "show_threshold": chosen.active.show_threshold, "cluster_source": s.cluster_source,
                   "typiclust_embedding": s.typiclust_embedding},
        "data": data.description,
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(rp.device),
                        "cpu_threads": torch.get_num_threads(), "machine": platform.machine(),
                        "cuda": torch.cuda.get_device_name(0) if rp.device.type == "cuda" else None},
        "runs": rows,
        "summary": summary,
        "paired": paired_differences(rows, "random"),
        "labels_to_95pct_full": labels_to_fraction_of_full(summary, CEILING_FRACTION),
        "pretrain": pretrained,
        "preannotation": measured["preannotation"],
        "calibration": measured["calibration"],
        "oracle": rp.oracle_log,
        "oracle_ok": all(o["ok"] for o in rp.oracle_log),
        "errors": errors,
        "seconds": round(time.perf_counter() - t_start, 1),
        "seconds_all_models": round(sum(e.get("seconds", 0) for e in ledger.entries.values()), 1),
    }
    atomic_write_text(out_dir / "simulation.json", json.dumps(doc, indent=1) + "\n")
    plot(doc, out_dir / "simulation.png")
    atomic_write_text(out_dir / "simulation.txt", format_table(doc) + "\n")
    return doc
