"""The label-efficiency benchmark (benchmarks/label_efficiency.py): oracle, pseudo-label
precision, and a tiny end-to-end run checked for its JSON schema and the oracle invariant."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers import tiny_config, write_tiny_coco
from tsp_model.cycle import run_cycle
from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.records import ImageScore, InstanceScore

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "label_efficiency.py"
_spec = importlib.util.spec_from_file_location("label_efficiency", _PATH)
le = importlib.util.module_from_spec(_spec)
sys.modules["label_efficiency"] = le  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(le)


@pytest.fixture
def pool(tmp_path):
    ann = write_tiny_coco(tmp_path / "data", count=8, seed=3)
    return CocoInstanceDataset(ann, tmp_path / "data" / "images", train=True)


def test_oracle_records_reveals_and_flags_leaks(pool):
    oracle = le.Oracle(pool)
    sub = oracle.reveal([2, 5])
    assert sorted(sub.ids) == [2, 5] and oracle.revealed == {2, 5}
    oracle.check([1, 2, 5])  # revealed ⊆ selected: fine
    with pytest.raises(le.OracleLeak, match=r"\[5\]"):
        oracle.check([2])
    # image metadata carries no labels, and does not count as a reveal
    assert set(oracle.image_info(0)) == {"id", "file_name", "width", "height"}
    assert oracle.revealed == {2, 5}


def test_run_cycle_reveals_only_the_labeled_images(tmp_path, pool):
    cfg = tiny_config(epochs=1, batch_size=1)
    cfg.active.budget, cfg.active.strategy = 2, "random"
    cfg.active.sigma_c = cfg.active.sigma_b = cfg.active.sigma_m = 0.0  # every prediction a pseudo label
    oracle = le.Oracle(pool)
    c1 = run_cycle(cfg, labeled_ids=[], pool_ids=oracle.ids, dataset=oracle, prev_checkpoint=None,
                   out_dir=tmp_path / "run", cycle_index=1, progress=False)
    assert oracle.revealed == set(c1.labeled_ids)
    c2 = run_cycle(cfg, labeled_ids=c1.labeled_ids, pool_ids=c1.pool_ids, dataset=oracle,
                   prev_checkpoint=c1.checkpoint, out_dir=tmp_path / "run", cycle_index=2, progress=False)
    # pseudo labels come from predictions, not from the oracle: only 4 images were ever revealed
    assert oracle.revealed == set(c2.labeled_ids) and len(oracle.revealed) == 4


def _gt_rle(pool, image_id):
    coco = pool.coco
    ann = coco.imgToAnns[image_id][0]
    return pool.class_names[pool.cat_to_label[ann["category_id"]] - 1], coco.annToRLE(ann)


def test_pseudo_label_precision_against_the_oracle(pool):
    oracle = le.Oracle(pool)
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
    r = le.pseudo_label_precision(records, [2], oracle, sigma_c=0.9, sigma_b=0.9, sigma_m=0.8)
    assert r == {"kept": 2, "correct": 1, "precision": 0.5}
    assert oracle.revealed == set() and oracle.peeked == {1}  # measurement is not a reveal


def test_labels_to_95pct_of_full():
    summary = {
        "full": [{"labeled": 100, "segm_ap50_mean": 0.5}],
        "tsp": [{"labeled": 10, "segm_ap50_mean": 0.3}, {"labeled": 20, "segm_ap50_mean": 0.48},
                {"labeled": 30, "segm_ap50_mean": 0.49}],
        "random": [{"labeled": 10, "segm_ap50_mean": 0.3}, {"labeled": 20, "segm_ap50_mean": 0.4}],
    }
    r = le.labels_to_fraction_of_full(summary, 0.95)
    assert r["target"] == pytest.approx(0.475)
    assert r["arms"] == {"tsp": 20, "random": None}


def test_parse_arms_rejects_unknown_strategy():
    arms = le.parse_arms(["tsp+pseudo", "random", "full"])
    assert [(a.strategy, a.pseudo_labels) for a in arms] == [("tsp", True), ("random", False), (None, False)]
    with pytest.raises(SystemExit, match="unknown strategy 'nope'"):
        le.parse_arms(["nope+pseudo"])


def test_tiny_benchmark_run_schema_and_oracle(tmp_path):
    s = le.Settings(dataset="phantoms", size="test", image_size=64, pool=12, test=4, budget=3, cycles=2,
                    seeds=[0], arms=["random", "tsp+pseudo", "full"], image_steps=1, min_epochs=1,
                    batch_size=1, warmup_iters=0, device="cpu")
    out = tmp_path / "res" / "le.json"
    doc = le.run_benchmark(s, out_json=out, out_png=out.with_suffix(".png"), work_dir=tmp_path / "work",
                           cache=tmp_path / "cache", progress=False)
    on_disk = json.loads(out.read_text())
    assert on_disk["schema"] == "tsp-label-efficiency/1" == doc["schema"]
    assert out.with_suffix(".png").stat().st_size > 1000
    for key in ("dataset", "size", "settings", "arms", "protocol", "data", "environment", "runs", "summary",
                "labels_to_95pct_full", "oracle", "oracle_ok", "errors", "seconds"):
        assert key in on_disk, key
    assert on_disk["errors"] == [] and on_disk["oracle_ok"] is True
    # 2 arms x 2 cycles + the ceiling
    assert sorted((r["arm"], r["cycle"], r["labeled"]) for r in on_disk["runs"]) == [
        ("full", 0, 12), ("random", 1, 3), ("random", 2, 6), ("tsp+pseudo", 1, 3), ("tsp+pseudo", 2, 6)]
    for r in on_disk["runs"]:
        for key in ("segm_ap50", "bbox_ap50", "pseudo_instances", "pseudo_precision", "train_seconds"):
            assert key in r
        assert 0.0 <= r["segm_ap50"] <= 1.0 and 0.0 <= r["bbox_ap50"] <= 1.0
    # the oracle: every arm revealed exactly its selected images, never another
    for o in on_disk["oracle"]:
        assert o["ok"] and o["revealed"] == o["selected"], o
    by_arm = {}
    for r in on_disk["runs"]:
        if r["arm"] != "full":
            by_arm.setdefault(r["arm"], []).extend(r["selected"])
    for arm, sel in by_arm.items():
        assert len(sel) == len(set(sel)) == 6, arm  # no image selected twice
    assert by_arm["random"][:3] == by_arm["tsp+pseudo"][:3]  # cycle 1 is shared
    assert set(on_disk["summary"]) == {"random", "tsp+pseudo", "full"}
    assert "cycle" in le.format_table(on_disk)


@pytest.mark.parametrize("size", ["smoke", "full"])
def test_size_configs_are_valid(size):
    s = le.make_settings("phantoms", size)
    assert s.budget * s.cycles <= s.pool
    for arm in le.parse_arms(["all"]):
        if arm.strategy is None:
            continue
        cfg = s.config(0, le.model_overrides(arm.strategy))
        cfg.active.strategy = arm.strategy
        cfg.train.epochs = s.epochs_for(s.budget)
        from tsp_model.config import TSPConfig

        TSPConfig.from_dict(cfg.to_dict())  # the config validation a GPU run would hit
    # the schedule rule: fewer labels -> more epochs, never below min_epochs
    assert s.epochs_for(s.budget) >= s.epochs_for(s.budget * s.cycles) >= s.min_epochs
