"""`tsp-sync` and `tsp-sync simulate` run one cycle, by construction: given the same labels, the
same previous model and the same settings, the product's retrain trains the very model the
replay's cycle trains (same weights), and the product's queue serves the images in the order
the replay labels them. A change to either side alone fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ls_fixtures import make_tiny_checkpoint
from tests.test_cli_retrain import phantom_workdir, write_snapshot
from tsp_cli.settings import ProjectSettings
from tsp_cli.workdir import atomic_write_json

pytestmark = pytest.mark.slow

OVERRIDES = {
    "model": {"backbone": "tiny_fpn", "min_size": 64, "max_size": 64, "box_score_thresh": 0.0,
              "box_detections_per_img": 3},
    "train": {"epochs": 2, "batch_size": 2, "workers": 0, "amp": False, "device": "cpu", "seed": 4},
    # one image per scoring batch: every image's detections independent of its batch neighbours
    "score": {"workers": 0, "batch_size": 1, "amp": False},
    # every detection of the tiny model becomes a pseudo label; b = 2 per cycle; the product's
    # defaults otherwise (tsp, clusters of the embeddings, fine-tuning from the previous model)
    "active": {"sigma_c": 0.0, "sigma_b": 0.0, "sigma_m": 0.0, "budget": 2, "score_threshold": 0.0},
}


def test_the_product_and_the_replay_run_the_same_cycle(tmp_path: Path) -> None:
    from tsp_cli.commands.retrain import retrain
    from tsp_cli.priority import pool_queue
    from tsp_model.al.cycle import run_cycle
    from tsp_model.data.coco import CocoInstanceDataset
    from tsp_model.engine.checkpoint import load_checkpoint, weights_digest
    wd, coco = phantom_workdir(tmp_path, 9, seed=3)
    atomic_write_json(tmp_path / "all.json", coco)
    settings = ProjectSettings(name="t", label_studio_project=1, workdir=wd.root, model_dir=wd.root / "models",
                               overrides=OVERRIDES)
    cfg = settings.train_config()
    prev = make_tiny_checkpoint(settings.model_dir, version="tsp-test-m1", detections=3, mtime=1_000_000)
    ids = [im["id"] for im in coco["images"]]
    first = ids[:3]

    # the replay: cycle 2 of Algorithm 1 from M_1, the oracle labeling the queue's first b
    oracle = CocoInstanceDataset(tmp_path / "all.json", wd.images, train=True)
    replayed = run_cycle(cfg, labeled_ids=first, pool_ids=ids[3:], dataset=oracle, prev_checkpoint=prev,
                         out_dir=tmp_path / "replay", cycle_index=2, progress=False)
    assert len(replayed.selected_ids) == 2 and replayed.num_pseudo_images > 0

    # the product: people labeled the same images; snapshot 2 holds them, M_1 is the current model
    write_snapshot(wd, coco, set(first))
    write_snapshot(wd, coco, set(first) | set(replayed.selected_ids))
    trained = retrain(settings, wd, progress=False)
    assert trained["init"] == "tsp-test-m1" and trained["pseudo_images"] == replayed.num_pseudo_images
    product, replay = load_checkpoint(trained["checkpoint"]), load_checkpoint(replayed.checkpoint)
    assert weights_digest(product["model"], 40) == weights_digest(replay["model"], 40)

    # the next queue: what Label Studio serves first is what the replay labels next
    queue = pool_queue(wd, wd.latest_snapshot(), Path(trained["checkpoint"]), cfg, progress=False)
    cycle3 = run_cycle(cfg, labeled_ids=replayed.labeled_ids, pool_ids=replayed.pool_ids, dataset=oracle,
                       prev_checkpoint=replayed.checkpoint, out_dir=tmp_path / "replay", cycle_index=3,
                       progress=False)
    assert queue.clusters  # the product's default: the queue has clusters
    assert queue.order[:2] == cycle3.selected_ids
    assert sorted(queue.order) == sorted(replayed.pool_ids)
