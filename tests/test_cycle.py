"""Algorithm 1, one cycle at a time, with the generated data set as the oracle."""

import pytest

from helpers import tiny_config, write_tiny_coco
from tsp_model.al.cycle import run_cycle
from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.engine.checkpoint import load_checkpoint
from tsp_model.core.records import read_jsonl


@pytest.fixture
def oracle(tmp_path):
    ann = write_tiny_coco(tmp_path / "data", count=8, seed=5)
    return CocoInstanceDataset(ann, tmp_path / "data" / "images", train=True)


def test_two_cycles(tmp_path, oracle):
    cfg = tiny_config(epochs=1)
    cfg.active.budget = 2
    cfg.active.strategy = "tsp"
    cfg.active.cluster_source = "none"  # the queue is the S_i order alone
    cfg.model.box_detections_per_img = 5
    # thresholds at 0: every predicted instance of an unselected image becomes a pseudo label
    cfg.active.sigma_c = cfg.active.sigma_b = cfg.active.sigma_m = 0.0
    ids = list(oracle.ids)

    c1 = run_cycle(cfg, labeled_ids=[], pool_ids=ids, dataset=oracle, prev_checkpoint=None,
                   out_dir=tmp_path / "run", cycle_index=1, progress=False)
    assert len(c1.selected_ids) == 2 and set(c1.selected_ids) <= set(ids)
    assert c1.labeled_ids == c1.selected_ids and sorted(c1.pool_ids + c1.labeled_ids) == ids
    assert c1.scores_path is None and c1.num_pseudo_images == 0
    assert load_checkpoint(c1.checkpoint)["data"] == {"labeled": 2, "pseudo": 0, "world_size": 1}

    c2 = run_cycle(cfg, labeled_ids=c1.labeled_ids, pool_ids=c1.pool_ids, dataset=oracle,
                   prev_checkpoint=c1.checkpoint, out_dir=tmp_path / "run", cycle_index=2, progress=False)
    records = read_jsonl(c2.scores_path)
    assert [r.image_id for r in records] == c1.pool_ids  # every pool image scored, by M_1
    assert {r.model_version for r in records} == {c1.model_version}
    # "tsp": the lowest S first (ties in S go either way: a seeded coin)
    chosen = [r.S for r in records if r.image_id in c2.selected_ids]
    assert len(chosen) == 2 and max(chosen) <= min(r.S for r in records if r.image_id not in c2.selected_ids)
    assert len(c2.labeled_ids) == 4 and len(c2.pool_ids) == 4
    rest_with_instances = [r for r in records if r.image_id not in c2.selected_ids and r.instances]
    assert c2.num_pseudo_images == len(rest_with_instances) > 0
    assert c2.num_pseudo_instances == sum(len(r.instances) for r in rest_with_instances)
    data = load_checkpoint(c2.checkpoint)["data"]
    assert data == {"labeled": 4, "pseudo": c2.num_pseudo_images, "world_size": 1}


def test_cycle_rejects_overlapping_ids(tmp_path, oracle):
    with pytest.raises(ValueError, match="both labeled and in the pool"):
        run_cycle(tiny_config(), labeled_ids=[1], pool_ids=[1, 2], dataset=oracle,
                  prev_checkpoint=None, out_dir=tmp_path, cycle_index=1)
