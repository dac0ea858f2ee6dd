"""`tsp-sync score` under every selection strategy, without a server.

The pool of a hand-built snapshot is scored by a tiny checkpoint; the queue score each task
gets is checked against the strategy's ranking computed by hand from the score records.
``push_predictions`` under strategy changes runs against a real Label Studio
(tests/test_cli_push_integration.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.ls_fixtures import BRUSH_CONFIG, CLASS_NAMES, make_tiny_checkpoint
from tests.test_cli_retrain import OVERRIDES, make_snapshot
from tsp_cli.priority import (
    pool_queue,
    queue_predictions,
    queue_version,
    split_queue_version,
)
from tsp_cli.settings import ProjectSettings
from tsp_model.core.config import ConfigError

pytestmark = pytest.mark.slow

VERSION = "tsp-test-v1"


def _settings(wd, **active) -> ProjectSettings:
    overrides = copy.deepcopy(OVERRIDES)
    overrides["active"].update(active)
    return ProjectSettings(name="t", label_studio_project=1, workdir=wd.root, model_dir=wd.root / "models",
                           overrides=overrides)


@pytest.fixture
def project(tmp_path: Path):
    wd = make_snapshot(tmp_path, labeled=3, total=7)
    ckpt = make_tiny_checkpoint(wd.root / "models", version=VERSION, detections=3)
    return wd, wd.latest_snapshot(), ckpt


def _target():
    from tsp_labelstudio.regions import parse_label_config

    return parse_label_config(BRUSH_CONFIG, class_names=CLASS_NAMES)


def _mean_entropy(rec) -> float:
    return sum(i.entropy for i in rec.instances) / len(rec.instances) if rec.instances else 0.0


def test_queue_version_round_trip() -> None:
    assert queue_version(VERSION, "tsp") == VERSION
    assert queue_version(VERSION, "class_entropy") == f"{VERSION}+class_entropy"
    assert split_queue_version(f"{VERSION}+class_entropy") == (VERSION, "class_entropy")
    assert split_queue_version(VERSION) == (VERSION, "tsp")


def test_tsp_pushes_S_unchanged(project) -> None:
    from tsp_labelstudio.regions import prediction_for_task

    wd, snap, ckpt = project
    q = pool_queue(wd, snap, ckpt, _settings(wd).train_config(), progress=False)
    assert q.strategy == "tsp" and q.queue_version == VERSION
    assert sorted(q.priority) == sorted(t["task_id"] for t in snap.pool())
    assert q.priority == {int(r.image_id): r.S for r in q.records}
    preds = dict(queue_predictions(q, _target(), show_threshold=0.0))  # built one record at a time
    for rec in q.records:  # exactly what the backend would serve, the score exactly S_i, plus the cluster
        assert preds[int(rec.image_id)] == prediction_for_task(rec, _target(), model_version=VERSION,
                                                               show_threshold=0.0, cluster=q.clusters[int(rec.image_id)])
        assert preds[int(rec.image_id)]["score"] == rec.S
    # every pool and labeled task has a cluster; k = b (active.budget) clusters at most
    labeled = [int(r.image_id) for r in q.labeled]
    assert labeled and sorted(q.clusters) == sorted([int(r.image_id) for r in q.records] + labeled)
    assert set(q.clusters.values()) <= set(range(_settings(wd).train_config().active.budget))
    for tid in labeled:  # labeled tasks hold a prediction for their cluster (never served: they are done)
        assert preds[tid]["cluster"] == q.clusters[tid]


def test_class_entropy_scores_follow_mean_entropy(project) -> None:
    from tsp_labelstudio.regions import prediction_for_task

    wd, snap, ckpt = project
    q = pool_queue(wd, snap, ckpt, _settings(wd, strategy="class_entropy").train_config(), progress=False)
    assert q.queue_version == f"{VERSION}+class_entropy"
    assert q.scores_path == wd.scores / f"{VERSION}.s{snap.number}.jsonl"
    ents = {int(r.image_id): _mean_entropy(r) for r in q.records}
    assert len(set(ents.values())) == len(ents)  # distinct, so the order is unambiguous
    by_entropy = sorted(ents, key=lambda t: -ents[t])  # highest mean entropy first
    n = len(by_entropy)
    assert q.priority == {t: k / n for k, t in enumerate(by_entropy)}

    preds = dict(queue_predictions(q, _target(), show_threshold=0.0))  # built one record at a time
    assert min(preds, key=lambda t: preds[t]["score"]) == by_entropy[0]
    for rec in q.records:
        tid = int(rec.image_id)
        served = prediction_for_task(rec, _target(), model_version=VERSION, show_threshold=0.0,
                                     cluster=q.clusters[tid])
        assert preds[tid]["result"] == served["result"]  # regions (s, c, b, m) untouched
        assert preds[tid]["model_version"] == f"{VERSION}+class_entropy"
        assert preds[tid]["score"] == pytest.approx(by_entropy.index(tid) / n)


def test_random_is_reproducible_per_snapshot(project) -> None:
    import numpy as np

    wd, snap, ckpt = project
    cfg = _settings(wd, strategy="random").train_config()
    q = pool_queue(wd, snap, ckpt, cfg, progress=False)
    records = list(q.records)
    # the seed of the replay's cycle that queues this snapshot's model: snapshot number + 1
    order = np.random.default_rng(cfg.train.seed + snap.number + 1).permutation(len(records))
    n = len(records)
    assert q.priority == {int(records[i].image_id): k / n for k, i in enumerate(order)}
    assert pool_queue(wd, snap, ckpt, cfg, progress=False).priority == q.priority


def test_core_set_rescores_without_embeddings_and_scores_labeled_once(project) -> None:
    from tsp_model.core.records import read_jsonl
    from tsp_model.al.strategies import priority_scores

    wd, snap, ckpt = project
    # tsp without clusters needs no embeddings
    pool_queue(wd, snap, ckpt, _settings(wd, cluster_source="none").train_config(), progress=False)
    path = wd.scores / f"{VERSION}.s{snap.number}.jsonl"
    assert not any("embedding" in r.extras for r in read_jsonl(path))

    cfg = _settings(wd, strategy="core_set", cluster_source="none").train_config()
    q = pool_queue(wd, snap, ckpt, cfg, progress=False)
    assert all("embedding" in r.extras for r in read_jsonl(path))  # scored again for core_set
    labeled_path = wd.scores / "labeled" / f"{VERSION}.s{snap.number}.jsonl"
    labeled = read_jsonl(labeled_path)
    assert sorted(r.image_id for r in labeled) == [1, 2, 3]  # the snapshot's labeled tasks
    assert all("embedding" in r.extras for r in labeled)
    assert q.priority == priority_scores(list(q.records), "core_set", labeled=labeled, budget=cfg.active.budget)
    assert sorted(q.priority.values()) == [k / 4 for k in range(4)]

    mtime = labeled_path.stat().st_mtime_ns
    again = pool_queue(wd, snap, ckpt, cfg, progress=False)
    assert again.priority == q.priority and labeled_path.stat().st_mtime_ns == mtime  # reused


def test_clusters_none_pushes_no_cluster_and_no_labeled_predictions(project) -> None:
    wd, snap, ckpt = project
    q = pool_queue(wd, snap, ckpt, _settings(wd, cluster_source="none").train_config(), progress=False)
    assert q.clusters == {}
    preds = dict(queue_predictions(q, _target(), show_threshold=0.0))
    assert sorted(preds) == sorted(int(r.image_id) for r in q.records)  # the pool only
    assert all("cluster" not in p for p in preds.values())


def test_series_clusters_follow_the_dicom_series_of_each_task() -> None:
    from tsp_model.al.diversity import assign_clusters
    from tsp_model.core.records import ImageScore

    recs = [ImageScore(i, f"{i}.png", 8, 8, S=0.5) for i in (1, 2, 3)]
    lab = [ImageScore(4, "4.png", 8, 8, S=0.5)]
    series = {1: "1.2.840.9", 2: "1.2.840.7", 3: "1.2.840.9", 4: "1.2.840.7"}
    # series numbered in sorted order: ...7 -> 0, ...9 -> 1
    assert assign_clusters(recs, lab, "series", budget=2, seed=0, series=series) == {1: 1, 2: 0, 3: 1, 4: 0}


def _checkpoint_with(model_dir: Path, **model) -> Path:
    import torch

    from tsp_model.core.config import ModelConfig, TSPConfig
    from tsp_model.engine.checkpoint import save_checkpoint
    from tsp_model.nn.model import build_model

    torch.manual_seed(0)
    cfg = TSPConfig(model=ModelConfig(backbone="tiny_fpn", min_size=64, max_size=64, box_score_thresh=0.0,
                                      box_detections_per_img=3, **model))
    net = build_model(cfg.model, num_classes=len(CLASS_NAMES) + 1)
    return save_checkpoint(Path(model_dir) / "drop.pt", {
        "model": net.state_dict(), "optimizer": None, "scheduler": None, "scaler": None, "config": cfg.to_dict(),
        "class_names": CLASS_NAMES, "epoch": 0, "model_version": "tsp-test-drop",
    })


def test_mc_dropout_ranks_by_mc_uncertainty(project) -> None:
    wd, snap, _ = project
    ckpt = _checkpoint_with(wd.root / "models", dropout=0.25)
    settings = _settings(wd, strategy="mc_dropout", mc_passes=3)
    settings.overrides["model"] = dict(settings.overrides["model"], dropout=0.25)
    q = pool_queue(wd, snap, ckpt, settings.train_config(), progress=False)
    u = {int(r.image_id): r.extras["mc_uncertainty"] for r in q.records}
    assert len(set(u.values())) == len(u)  # distinct: the order is the strategy's, not the pool's
    expected = sorted(u, key=lambda t: -u[t])  # most uncertain first (ties keep pool order)
    assert sorted(q.priority, key=q.priority.get) == expected
    assert q.queue_version == "tsp-test-drop+mc_dropout"


@pytest.mark.parametrize(
    "strategy, model, key",
    [("mc_dropout", {"dropout": 0.25}, "model.dropout"),
     ("learning_loss", {"learning_loss": True}, "model.learning_loss")],
)
def test_checkpoint_without_the_strategys_parts_is_one_clear_error(project, strategy, model, key) -> None:
    wd, snap, ckpt = project  # the tiny checkpoint has neither dropout nor a loss-prediction module
    settings = _settings(wd, strategy=strategy)
    settings.overrides["model"] = dict(settings.overrides["model"], **model)
    with pytest.raises(ConfigError) as err:
        pool_queue(wd, snap, ckpt, settings.train_config(), progress=False)
    msg = str(err.value)
    assert msg.startswith(f"{key}: active.strategy = {strategy!r}") and ckpt.name in msg and "\n" not in msg
    assert not wd.scores.exists() or not list(wd.scores.glob("*.jsonl"))  # failed before scoring


def test_unknown_strategy_names_the_key(project) -> None:
    wd, snap, ckpt = project
    with pytest.raises(ConfigError, match=r"^active.strategy: unknown selection strategy 'entropy'; known: "):
        pool_queue(wd, snap, ckpt, _settings(wd, strategy="entropy").train_config(), progress=False)


def test_status_names_the_strategy_that_ordered_the_queue(tmp_path: Path) -> None:
    from tsp_cli.commands.status import format_status

    ce = f"{VERSION}+class_entropy"
    info = {"project": "t", "workdir": str(tmp_path), "snapshot": None, "counts": {}, "models": [],
            "last_score": {"model_version": ce, "strategy": "class_entropy", "scored": 2, "snapshot": 1,
                           "top": [{"task": 11, "score": 0.0, "S": 0.42}, {"task": 10, "score": 0.5, "S": 0.1}]},
            "last_reorder": {"model_version": ce, "sampling": "Uncertainty sampling", "view_id": 3,
                             "verify": {"next_task": 11, "honored": True},
                             "top": [{"task": 11, "score": 0.0, "S": 0.42}, {"task": 10, "score": 0.5, "S": 0.1}]}}
    text = format_status(info)
    assert f"predictions {ce} ordered by class_entropy" in text
    assert "ordered by class_entropy, Uncertainty sampling, view 3; /next serves task 11" in text
    assert "top of the queue by score (class_entropy: lowest score = rank / N first):" in text
    assert text.splitlines()[-2:] == ["  task     11  score = 0.0000  S = 0.4200",
                                      "  task     10  score = 0.5000  S = 0.1000"]
    # a summary written before strategies were recorded: tsp, S_i only
    info["last_reorder"] = None
    info["last_score"] = {"model_version": VERSION, "top": [{"task": 10, "S": 0.1}]}
    text = format_status(info)
    assert "top of the queue by score (tsp: lowest S_i first):" in text and text.endswith("task     10  S = 0.1000")
    # with clusters: each task's cluster, and what the order means for an annotator
    info["last_score"] = {"model_version": VERSION, "top": [{"task": 10, "S": 0.1, "cluster": 3},
                                                             {"task": 12, "S": 0.2, "cluster": 0}]}
    text = format_status(info)
    assert "each annotator is served the lowest of the cluster they labeled least in" in text
    assert text.splitlines()[-2:] == ["  task     10  S = 0.1000  cluster 3", "  task     12  S = 0.2000  cluster 0"]
