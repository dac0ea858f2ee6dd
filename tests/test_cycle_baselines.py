"""Algorithm 1 with the Figure 2 baselines: each strategy gets the pool data it needs."""

import pytest

from helpers import tiny_config, write_tiny_coco
from tsp_model.al.cycle import run_cycle
from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.core.records import read_jsonl
from tsp_model.al.strategies import get_strategy


@pytest.fixture
def oracle(tmp_path):
    ann = write_tiny_coco(tmp_path / "data", count=8, seed=5)
    return CocoInstanceDataset(ann, tmp_path / "data" / "images", train=True)


@pytest.mark.parametrize(
    "strategy, model_overrides, extra_key",
    [
        ("mc_dropout", {"dropout": 0.25}, "mc_uncertainty"),
        ("core_set", {}, "embedding"),
        ("learning_loss", {"learning_loss": True}, "predicted_loss"),
    ],
)
def test_second_cycle_selects_with_the_baseline(tmp_path, oracle, strategy, model_overrides, extra_key):
    cfg = tiny_config(epochs=1)
    cfg.active.budget = 2
    cfg.active.strategy = strategy
    cfg.active.mc_passes = 3
    cfg.active.pseudo_labels = False
    cfg.active.cluster_source = "none"  # the strategy's own order, no clusters in the queue
    cfg.model.box_detections_per_img = 5
    for key, value in model_overrides.items():
        setattr(cfg.model, key, value)
    ids = list(oracle.ids)
    c1 = run_cycle(cfg, labeled_ids=[], pool_ids=ids, dataset=oracle, prev_checkpoint=None,
                   out_dir=tmp_path / "run", cycle_index=1, progress=False)
    c2 = run_cycle(cfg, labeled_ids=c1.labeled_ids, pool_ids=c1.pool_ids, dataset=oracle,
                   prev_checkpoint=c1.checkpoint, out_dir=tmp_path / "run", cycle_index=2, progress=False)
    records = read_jsonl(c2.scores_path)
    assert [r.image_id for r in records] == c1.pool_ids
    assert all(extra_key in r.extras for r in records)
    labeled_path = tmp_path / "run" / "scores" / "cycle2.labeled.jsonl"
    labeled = []
    if strategy == "core_set":
        labeled = read_jsonl(labeled_path)
        assert [r.image_id for r in labeled] == c1.labeled_ids
        assert all("embedding" in r.extras and "mc_uncertainty" not in r.extras for r in labeled)
    else:
        assert not labeled_path.exists()  # only core_set scores the labeled set
    assert c2.selected_ids == get_strategy(strategy).select(records, 2, seed=cfg.train.seed + 2, labeled=labeled)
