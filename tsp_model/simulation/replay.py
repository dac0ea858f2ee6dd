"""The replay: Algorithm 1 with an oracle, for every arm and seed, resumable.

Protocol (the same for every arm, so differences are the strategies'):

- one group-aware split (:mod:`tsp_model.simulation.splits`) with ``split_seed``: pool,
  validation (design choices and calibration only) and test (reported only); or a given test set;
- cycle 1 selects ``b`` images without a model (random with seed ``seed + 1``, or TypiClust for
  arms marked ``+typiclust``); its model M_1 is trained once per seed (and model variant) and
  shared by the arms that start the same way;
- every later cycle trains M_k from scratch with the same initialization (``train.seed = seed``;
  with ``init``, every cycle starts from that checkpoint's matching weights: the warm-start
  regime), schedule ``epochs = max(min_epochs, ceil(image_steps / labeled))`` with lr x0.1 at
  90% and 98%: a model sees about the same number of labeled images whatever the labeled count.
  ``+pseudo`` arms train the same labeled batches for the same number of steps, with
  ``train.pseudo_per_batch`` pseudo-labeled images added to each batch;
- design choices are made once, on the validation split (:mod:`tsp_model.simulation.design`),
  and then hold for every arm and seed; ``design_from`` takes another run's;
- metric: COCO mAP@0.5 of masks (and boxes) on the test set(s); the ``tsp`` arm's models are
  also measured for calibration (Spearman of c, b, m, s with each detection's true IoU) on the
  validation split.

Every finished model and measurement is a line in ``<out>/ledger.jsonl`` (a model's checkpoint
stays until its seed is done): a killed run started again with the same settings repeats no
finished model, and continues an interrupted training from its last finished epoch. Another arm
or seed list resumes the same run; processes with disjoint seeds may share one folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from tsp_model.al.cycle import run_cycle
from tsp_model.core.config import ActiveConfig, TSPConfig
from tsp_model.core.records import read_jsonl
from tsp_model.engine import distributed as du
from tsp_model.simulation.data import SimulationData
from tsp_model.simulation.ledger import Ledger
from tsp_model.simulation.measure import calibration_of, label_stats, preannotation_cost, test_metrics
from tsp_model.simulation.oracle import Oracle, pseudo_label_precision, threshold_stats
from tsp_model.simulation.results import FULL
from tsp_model.simulation.settings import Arm, SimulationSettings, model_overrides, queue_clusters, variant_tag

log = logging.getLogger(__name__)

__all__ = ["Replay"]


def _row(arm: str, seed: int, cycle: int, labeled: int, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    main = metrics["test"]
    row = {"arm": arm, "seed": seed, "cycle": cycle, "labeled": labeled,
           "segm_ap50": main["segm_ap50"], "bbox_ap50": main["bbox_ap50"],
           "segm_map": main["segm_map"], "bbox_map": main["bbox_map"]}
    row.update(extra)
    row["extra_tests"] = {k: v for k, v in metrics.items() if k != "test"}
    return row


class Replay:
    """One replay in one folder: its settings, data, ledger and device, and the units of work
    (a cycle's model, a measurement) that the design and the arms are made of."""

    def __init__(self, data: SimulationData, settings: SimulationSettings, out_dir: Path, *,
                 base_config: TSPConfig | None, ledger: Ledger, bar: Any, echo: Callable[[str], None]) -> None:
        self.data, self.s, self.base_config = data, settings, base_config
        self.work = out_dir / "work"
        self.ledger, self.bar, self.echo = ledger, bar, echo
        self.dist = du.init_distributed(settings.device)
        self.device = self.dist.device
        self.pool_ids = list(data.pool.ids)
        self.oracle_log: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- units of work
    def train_cycle(self, key: str, cfg: TSPConfig, *, labeled: list[int], pool: list[int], oracle: Oracle,
                    prev: str | None, cycle: int, out: Path, need_checkpoint: bool = True) -> dict[str, Any]:
        """One :func:`~tsp_model.al.cycle.run_cycle`, recorded in the ledger (or read back from it;
        trained again when its checkpoint is needed but was removed with a finished seed)."""
        done = self.ledger.get(key)
        if done is not None and (not need_checkpoint or Path(done["checkpoint"]).is_file()):
            oracle.revealed |= set(done["labeled_ids"])
            return done
        cfg.train.epochs = self.s.epochs_for(len(labeled) + min(self.s.budget, len(pool)))
        t0 = time.perf_counter()
        res = run_cycle(cfg, labeled_ids=labeled, pool_ids=pool, dataset=oracle, prev_checkpoint=prev,
                        out_dir=out, cycle_index=cycle, dist=self.dist, progress=False, resume=True,
                        series=self.data.groups)
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
        self.bar.update(1)
        return self.ledger.add(key, kind="model", checkpoint=str(res.checkpoint), selected_ids=list(res.selected_ids),
                               labeled_ids=list(res.labeled_ids), pool_ids=list(res.pool_ids),
                               epochs=cfg.train.epochs, seconds=round(seconds, 1),
                               pseudo_images=res.num_pseudo_images, pseudo_instances=res.num_pseudo_instances,
                               scores=str(res.scores_path or ""), **extra)

    def metrics(self, key: str, checkpoint: str, sets: dict[str, Any], what: str) -> dict[str, Any]:
        """mAP of a model on ``sets`` (ledgered under ``<key>/<what>``)."""
        entry = self.ledger.get(f"{key}/{what}")
        if entry is None:
            entry = self.ledger.add(f"{key}/{what}", kind="metrics", metrics=test_metrics(
                Path(checkpoint), sets, self.device, max(self.s.batch_size, 4), self.s.amp))
        return entry["metrics"]

    def measure(self, key: str, compute: Callable[[], Any]) -> dict[str, Any]:
        """A measurement, computed once (ledgered under ``key``; the value is ``["value"]``)."""
        entry = self.ledger.get(key)
        return entry if entry is not None else self.ledger.add(key, kind="measurement", value=compute())

    def cycle1(self, seed: int, s: SimulationSettings, over: dict[str, Any], first: str,
               need_checkpoint: bool = True) -> tuple[str, dict[str, Any]]:
        """M_1 of a seed, model variant (``s``) and start (arm overrides, first-batch rule)."""
        start = first if first != "typiclust" else f"typiclust-{s.typiclust_embedding}"
        tag = f"cycle1_{start}_{variant_tag(s, self.base_config)}" + "".join(f"_{k}{v}" for k, v in sorted(over.items()))
        key = f"seed{seed}/{tag}"
        cfg = s.config(seed, self.base_config, over)
        cfg.active.first_batch = first  # type: ignore[assignment]
        oracle = Oracle(self.data.pool)
        entry = self.train_cycle(key, cfg, labeled=[], pool=self.pool_ids, oracle=oracle, prev=None, cycle=1,
                                 out=self.work / f"seed{seed}" / tag, need_checkpoint=need_checkpoint)
        self.oracle_log.append({"seed": seed, "arm": tag, "revealed": len(oracle.revealed),
                                "selected": len(entry["labeled_ids"]),
                                "ok": oracle.revealed <= set(entry["labeled_ids"])})
        return key, entry

    def calibration(self, key: str, checkpoint: str, active: ActiveConfig) -> dict[str, Any] | None:
        """Calibration of a model on the validation split (None without one)."""
        if self.data.validation is None:
            return None
        return self.measure(f"{key}/calibration", lambda: calibration_of(
            Path(checkpoint), self.data.validation, self.device, self.s.amp, active))["value"]

    # ---------------------------------------------------------------- arms
    def run_arm(self, seed: int, arm: Arm) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Every cycle of one arm and seed: the result rows and the ``tsp`` arm's measurements."""
        s, data = self.s, self.data
        over = model_overrides(arm.strategy)
        c1_key, c1 = self.cycle1(seed, s, over, arm.first_batch,
                                 need_checkpoint=s.cycles > 1 and self.ledger.get(f"seed{seed}/{arm.name}/cycle2") is None)
        extras: dict[str, Any] = {}
        rows = [_row(arm.name, seed, 1, len(c1["labeled_ids"]), self.metrics(c1_key, c1["checkpoint"], data.tests, "test"),
                     pseudo_images=0, pseudo_instances=0, pseudo_correct=None, pseudo_precision=None,
                     epochs=c1["epochs"], train_seconds=c1["seconds"], selected=c1["selected_ids"],
                     selected_groups=len({data.groups[i] for i in c1["selected_ids"]}),
                     **label_stats(data.pool, c1["labeled_ids"], data.groups))]
        cfg = s.config(seed, self.base_config, over)
        cfg.active.strategy, cfg.active.pseudo_labels = arm.strategy, arm.pseudo_labels
        cfg.active.cluster_source = queue_clusters(s, arm.strategy)  # type: ignore[assignment]
        if arm.pseudo_weight is not None:
            cfg.model.semi_loss_weight = arm.pseudo_weight
        if arm.name == "tsp":
            extras["calibration"] = {"cycle1": self.calibration(c1_key, c1["checkpoint"], cfg.active)}
        oracle = Oracle(data.pool)
        oracle.revealed |= set(c1["labeled_ids"])
        prev, labeled, pool = c1["checkpoint"], list(c1["labeled_ids"]), list(c1["pool_ids"])
        arm_dir = self.work / f"seed{seed}" / arm.name.replace("+", "_")
        try:
            for k in range(2, s.cycles + 1):
                key = f"seed{seed}/{arm.name}/cycle{k}"
                needed = k < s.cycles and self.ledger.get(f"seed{seed}/{arm.name}/cycle{k + 1}") is None
                entry = self.train_cycle(key, cfg, labeled=labeled, pool=pool, oracle=oracle, prev=prev, cycle=k,
                                         out=arm_dir, need_checkpoint=needed)
                metrics = self.metrics(key, entry["checkpoint"], data.tests, "test")
                pp = entry.get("pseudo") or {"correct": None, "precision": None}
                rows.append(_row(arm.name, seed, k, len(entry["labeled_ids"]), metrics,
                                 pseudo_images=entry["pseudo_images"], pseudo_instances=entry["pseudo_instances"],
                                 pseudo_correct=pp["correct"], pseudo_precision=pp["precision"],
                                 epochs=entry["epochs"], train_seconds=entry["seconds"], selected=entry["selected_ids"],
                                 selected_groups=len({data.groups[i] for i in entry["selected_ids"]}),
                                 pool_thresholds=entry.get("pool_thresholds"),
                                 **label_stats(data.pool, entry["labeled_ids"], data.groups)))
                self.echo(f"{arm.name} seed {seed} cycle {k}: {len(entry['labeled_ids'])} labeled, mask AP50 "
                          f"{rows[-1]['segm_ap50']:.4f}, pseudo {entry['pseudo_instances']}")
                if arm.name == "tsp":
                    extras["calibration"][f"cycle{k}"] = self.calibration(key, entry["checkpoint"], cfg.active)
                    if k == s.cycles:
                        extras["preannotation"] = self._preannotation(seed, c1["checkpoint"], entry["checkpoint"])
                prev, labeled, pool = entry["checkpoint"], entry["labeled_ids"], entry["pool_ids"]
        finally:
            self.oracle_log.append({"seed": seed, "arm": arm.name, "revealed": len(oracle.revealed),
                                    "selected": len(labeled), "peeked_for_measurement": len(oracle.peeked),
                                    "ok": oracle.revealed <= set(labeled)})
        return rows, extras

    def run_full(self, seed: int) -> dict[str, Any]:
        """The fully supervised ceiling of a seed: every pool image labeled."""
        from tsp_model.engine.train import train

        s, data = self.s, self.data
        key = f"seed{seed}/full"
        entry = self.ledger.get(key)
        if entry is None:
            cfg = s.config(seed, self.base_config)
            cfg.train.epochs = s.epochs_for(len(self.pool_ids))
            oracle = Oracle(data.pool)
            t0 = time.perf_counter()
            ckpt = train(cfg, oracle.reveal(self.pool_ids), out_path=self.work / f"seed{seed}" / "full.pt",
                         class_names=oracle.class_names, dist=self.dist, progress=False, resume=True)
            entry = self.ledger.add(key, kind="model", checkpoint=str(ckpt), epochs=cfg.train.epochs,
                                    seconds=round(time.perf_counter() - t0, 1))
            self.bar.update(1)
        self.oracle_log.append({"seed": seed, "arm": FULL, "revealed": len(self.pool_ids),
                                "selected": len(self.pool_ids), "ok": True})
        return _row(FULL, seed, 0, len(self.pool_ids), self.metrics(key, entry["checkpoint"], data.tests, "test"),
                    pseudo_images=0, pseudo_instances=0, pseudo_correct=None, pseudo_precision=None,
                    epochs=entry["epochs"], train_seconds=entry["seconds"], selected=None,
                    **label_stats(data.pool, self.pool_ids, data.groups))

    def _preannotation(self, seed: int, first: str, last: str) -> dict[str, Any]:
        entry = self.ledger.get(f"seed{seed}/preannotation")
        if entry is None:
            # before (every detection), after (the threshold chosen here) and the product's default
            chosen = self.s.config(seed, self.base_config).active.show_threshold
            thresholds = sorted({0.05, float(chosen), ActiveConfig().show_threshold})
            test = self.data.tests["test"]
            entry = self.ledger.add(
                f"seed{seed}/preannotation", kind="measurement",
                cycle1=preannotation_cost(Path(first), test, thresholds, self.device, self.s.amp),
                last=preannotation_cost(Path(last), test, thresholds, self.device, self.s.amp),
                before_threshold=0.05, after_threshold=float(chosen))
        return {k: entry[k] for k in ("cycle1", "last", "before_threshold", "after_threshold")}

    def finish_seed(self, seed: int) -> None:
        """Every model of this seed is in the ledger: record it, and drop its weights unless kept."""
        if self.ledger.get(f"seed{seed}/done") is None:
            self.ledger.add(f"seed{seed}/done", kind="seed")
        if not self.s.keep_checkpoints:
            for entry in list(self.ledger.entries.values()):
                if entry.get("kind") == "model" and entry["key"].startswith(f"seed{seed}/"):
                    Path(entry["checkpoint"]).unlink(missing_ok=True)
