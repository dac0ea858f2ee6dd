"""The label-efficiency presets (benchmarks/label_efficiency.py) over tsp_model.simulation: presets
that build valid settings, data made the documented way, and the simulation's measurements
(pseudo-label precision, labels to 95% of full) against hand-made cases."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers import write_tiny_coco
from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.core.records import ImageScore, InstanceScore
from tsp_model.simulation import Oracle, parse_arms, pseudo_label_precision
from tsp_model.simulation.results import labels_to_fraction_of_full

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "label_efficiency.py"
_spec = importlib.util.spec_from_file_location("label_efficiency", _PATH)
le = importlib.util.module_from_spec(_spec)
sys.modules["label_efficiency"] = le  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(le)


@pytest.fixture
def pool(tmp_path):
    ann = write_tiny_coco(tmp_path / "data", count=8, seed=3)
    return CocoInstanceDataset(ann, tmp_path / "data" / "images", train=True)


def test_oracle_image_info_carries_no_labels(pool):
    oracle = Oracle(pool)
    assert set(oracle.image_info(0)) == {"id", "file_name", "width", "height"}
    assert oracle.revealed == set()


def _gt_rle(pool, image_id):
    coco = pool.coco
    ann = coco.imgToAnns[image_id][0]
    return pool.class_names[pool.cat_to_label[ann["category_id"]] - 1], coco.annToRLE(ann)


def test_pseudo_label_precision_against_the_oracle(pool):
    oracle = Oracle(pool)
    name, rle = _gt_rle(pool, 1)
    other = [n for n in pool.class_names if n != name][0]
    counts = rle["counts"]
    mask = {"size": rle["size"], "counts": counts if isinstance(counts, str) else counts.decode("ascii")}

    def inst(category, c=0.99, b=0.99, m=0.99, mask=mask):
        return InstanceScore(label=1, category=category, box=[0, 0, 10, 10], c=c, b=b, m=m, s=0.9, entropy=0.1, mask=mask)

    records = [
        # kept + right class + same mask: correct; kept + wrong class: wrong; low c: not kept
        ImageScore(1, "a.png", 64, 64, 0.5, [inst(name), inst(other), inst(name, c=0.5)]),
        # image 2 was selected this cycle: its predictions are not pseudo labels
        ImageScore(2, "b.png", 64, 64, 0.5, [inst(name)]),
    ]
    r = pseudo_label_precision(records, [2], oracle, sigma_c=0.9, sigma_b=0.9, sigma_m=0.8)
    assert r == {"kept": 2, "correct": 1, "precision": 0.5}
    assert oracle.revealed == set() and oracle.peeked == {1}  # measurement is not a reveal


def test_labels_to_95pct_of_full():
    summary = {
        "full": [{"labeled": 100, "segm_ap50_mean": 0.5}],
        "tsp": [{"labeled": 10, "segm_ap50_mean": 0.3}, {"labeled": 20, "segm_ap50_mean": 0.48},
                {"labeled": 30, "segm_ap50_mean": 0.49}],
        "random": [{"labeled": 10, "segm_ap50_mean": 0.3}, {"labeled": 20, "segm_ap50_mean": 0.4}],
    }
    r = labels_to_fraction_of_full(summary, 0.95)
    assert r["target"] == pytest.approx(0.475)
    assert r["arms"] == {"tsp": 20, "random": None}


def test_parse_arms_flags_and_unknown_strategy():
    arms = parse_arms(["tsp+pseudo", "random", "tsp_diverse+pseudo+typiclust", "full"])
    assert [(a.strategy, a.pseudo_labels, a.first_batch) for a in arms] == [
        ("tsp", True, "random"), ("random", False, "random"), ("tsp_diverse", True, "typiclust"), (None, False, "random")]
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_arms(["nope+pseudo"])
    with pytest.raises(ValueError, match="STRATEGY\\+pseudo"):
        parse_arms(["tsp+pseud0"])
    # +pseudo0: the pseudo-labeled images in every batch, beta = 0 (the control arm)
    (control,) = parse_arms(["tsp+pseudo0"])
    assert (control.strategy, control.pseudo_labels, control.pseudo_weight) == ("tsp", True, 0.0)
    assert parse_arms(["tsp+pseudo"])[0].pseudo_weight is None  # the config's beta
    with pytest.raises(ValueError, match="STRATEGY\\+pseudo"):
        parse_arms(["tsp+pseudo+pseudo0"])


@pytest.mark.parametrize("size", list(le.SIZES))
@pytest.mark.parametrize("dataset", ["phantom_series", "phantoms", "nuclei"])
@pytest.mark.parametrize("regime", ["scratch", "warm", "pretrained"])
def test_presets_are_valid(size, dataset, regime):
    from tsp_model.core.config import TSPConfig
    from tsp_model.simulation.settings import model_overrides

    s = le.settings_for(dataset, size, regime)
    s.check()
    for arm in parse_arms(s.arms):
        if arm.strategy is None:
            continue
        cfg = s.config(0, None, model_overrides(arm.strategy))
        cfg.active.strategy = arm.strategy
        cfg.train.epochs = s.epochs_for(s.budget)
        TSPConfig.from_dict(cfg.to_dict())  # the validation a long run would hit
    # the schedule rule: fewer labels -> more epochs, never below min_epochs
    assert s.epochs_for(s.budget) >= s.epochs_for(s.budget * s.cycles) >= s.min_epochs


def test_phantom_series_test_heads_are_disjoint_from_the_pool(tmp_path):
    size = dict(series=3, slices=4, test_series=2, image_size=48)
    pool, test = le.phantom_series_data(size, tmp_path)
    pool_series = {im["series_id"] for im in json.loads(pool.read_text())["images"]}
    test_series = {im["series_id"] for im in json.loads(test.read_text())["images"]}
    assert len(pool_series) == 3 and len(test_series) == 2 and not pool_series & test_series


def test_nuclei_tiles_keep_their_source_image():
    import numpy as np

    labels = np.zeros((8, 8), dtype=np.int32)
    labels[0:3, 0:3] = 1  # 9 px nucleus in the first tile
    labels[3, 3:5] = 2  # cut by the border: 2 px in tile (0, 4) -> dropped at min_area 4
    tiles = le.tile_instances(np.arange(64).reshape(8, 8), labels, 4, min_area=4)
    assert [(y, x, len(m)) for y, x, _, m in tiles] == [(0, 0, 1), (0, 4, 0), (4, 0, 0), (4, 4, 0)]
