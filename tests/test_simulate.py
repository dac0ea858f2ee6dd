"""tsp-sync simulate / tsp_model.simulation: the replay end to end, the oracle, group-aware splits,
resuming a killed run, and one-line errors for bad COCO files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from tsp_cli.main import cli
from tsp_model.simulation import Oracle, OracleLeak, SimulationSettings, group_split, run_simulation
from tsp_model.simulation.data import load_simulation_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    from tsp_model.synth.phantom import generate_series

    return generate_series(tmp_path_factory.mktemp("series"), 8, slices=5, size=64, seed=1, progress=False)


def _tiny(**kw) -> SimulationSettings:
    values = dict(arms=["random", "tsp", "full"], seeds=[0], budget=3, cycles=2, image_size=64, image_steps=12,
                  min_epochs=1, batch_size=2, tune=False, validation=0.0, test=0.25, threads=1)
    values.update(kw)
    return SimulationSettings(**values)


# ----------------------------------------------------------------------------- splits
def test_group_split_never_puts_one_group_in_two_splits():
    rng = random.Random(0)
    images = [{"id": i, "series_id": f"s{rng.randrange(23)}"} for i in range(1, 400)]
    for seed in range(5):
        sp = group_split(images, validation=0.15, test=0.2, seed=seed)
        assert sp.group_key == "series_id"
        assert sorted(sp.pool + sp.validation + sp.test) == [im["id"] for im in images]  # each image once
        groups = {im["id"]: im["series_id"] for im in images}
        parts = [{groups[i] for i in part} for part in (sp.pool, sp.validation, sp.test)]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(sp.test) >= 0.2 * len(images) and len(sp.validation) >= 0.15 * len(images)
    # deterministic for a seed, different across seeds
    assert group_split(images, validation=0.1, test=0.2, seed=3).test == group_split(images, validation=0.1, test=0.2, seed=3).test
    assert group_split(images, validation=0.1, test=0.2, seed=3).test != group_split(images, validation=0.1, test=0.2, seed=4).test


def test_group_split_falls_back_to_single_images_and_honours_an_explicit_key():
    images = [{"id": i, "source": "a" if i < 5 else "b", "patient_id": f"p{i}"} for i in range(10)]
    assert group_split(images, validation=0.0, test=0.3, seed=0).group_key == "patient_id"  # first of GROUP_KEYS
    sp = group_split(images, validation=0.0, test=0.3, seed=0, group_key="source")
    assert sp.test in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])  # a whole source image's tiles
    solo = group_split([{"id": i} for i in range(10)], validation=0.2, test=0.2, seed=0)
    assert solo.group_key is None and len(solo.test) == 2 and len(solo.validation) == 2


# ----------------------------------------------------------------------------- the oracle
def test_oracle_reveals_only_selected_labels(series, tmp_path):
    from tsp_model.core.config import TSPConfig
    from tsp_model.al.cycle import run_cycle
    from tsp_model.data.coco import CocoInstanceDataset

    ds = CocoInstanceDataset(series, train=True)
    oracle = Oracle(ds)
    cfg = TSPConfig()
    cfg.model.backbone, cfg.model.min_size, cfg.model.max_size = "tiny_fpn", 64, 64  # type: ignore[assignment]
    cfg.train.epochs, cfg.train.batch_size, cfg.train.workers, cfg.train.amp, cfg.train.device = 1, 2, 0, False, "cpu"
    cfg.score.workers, cfg.score.amp = 0, False
    cfg.active.budget, cfg.active.strategy = 4, "tsp"
    r1 = run_cycle(cfg, labeled_ids=[], pool_ids=ds.ids, dataset=oracle, prev_checkpoint=None, out_dir=tmp_path,
                   cycle_index=1, progress=False)
    assert oracle.revealed == set(r1.selected_ids) and len(r1.selected_ids) == 4
    r2 = run_cycle(cfg, labeled_ids=r1.labeled_ids, pool_ids=r1.pool_ids, dataset=oracle,
                   prev_checkpoint=r1.checkpoint, out_dir=tmp_path, cycle_index=2, progress=False)
    # the pool was scored from images alone: only the labeled set was ever revealed
    assert oracle.revealed == set(r2.labeled_ids) and len(r2.labeled_ids) == 8
    oracle.check(r2.labeled_ids)
    oracle.reveal([r2.pool_ids[0]])
    with pytest.raises(OracleLeak, match=str(r2.pool_ids[0])):
        oracle.check(r2.labeled_ids)


# ----------------------------------------------------------------------------- end to end
def test_simulate_end_to_end_on_a_tiny_coco_set(series, tmp_path):
    out = tmp_path / "sim"
    args = ["--no-progress", "simulate", "--coco", str(series), "--out", str(out), "--arms", "random,tsp,full",
            "--seeds", "0", "--budget", "3", "--cycles", "2", "--image-size", "64", "--image-steps", "12",
            "--min-epochs", "1", "--no-tune", "--validation", "0", "--test-fraction", "0.25", "--threads", "1"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "labels to reach 95% of full supervision" in res.output and "oracle: revealed" in res.output
    doc = json.loads((out / "simulation.json").read_text())
    assert (out / "simulation.png").stat().st_size > 10_000
    assert {(r["arm"], r["cycle"]) for r in doc["runs"]} == {("random", 1), ("random", 2), ("tsp", 1), ("tsp", 2),
                                                             ("full", 0)}
    assert doc["oracle_ok"] and not doc["errors"]
    split = doc["data"]["split"]
    assert split["group_key"] == "series_id" and split["images"]["test"] == 10  # 2 of 8 series x 5 slices
    labeled = {(r["arm"], r["cycle"]): r["labeled"] for r in doc["runs"]}
    assert labeled[("tsp", 1)] == 3 and labeled[("tsp", 2)] == 6 and labeled[("full", 0)] == 30
    # both arms share M_1: the same first batch and the same cycle-1 mAP
    first = {r["arm"]: r for r in doc["runs"] if r["cycle"] == 1}
    assert first["tsp"]["selected"] == first["random"]["selected"]
    assert first["tsp"]["segm_ap50"] == first["random"]["segm_ap50"]
    assert [e["cycle"] for e in doc["paired"]["arms"]["tsp"]] == [1, 2]


def test_a_killed_run_resumes_without_retraining_a_finished_model(series, tmp_path, monkeypatch):
    import tsp_model.simulation.replay as replay

    settings = _tiny(arms=["random", "tsp"])
    data, _ = load_simulation_data(series, None, settings)
    calls: list[int] = []
    real = replay.run_cycle

    def counting(*args, **kwargs):
        calls.append(kwargs["cycle_index"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while the third model trains
        return real(*args, **kwargs)

    monkeypatch.setattr(replay, "run_cycle", counting)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(data, settings, tmp_path / "sim", progress=False)
    assert calls == [1, 2, 2]  # M_1, random's cycle 2, then the kill in tsp's cycle 2
    calls.clear()
    doc = run_simulation(data, _tiny(arms=["random", "tsp"]), tmp_path / "sim", progress=False)
    assert calls == [2]  # only the interrupted model is trained again
    assert {(r["arm"], r["cycle"]) for r in doc["runs"]} == {("random", 1), ("random", 2), ("tsp", 1), ("tsp", 2)}
    calls.clear()
    run_simulation(data, _tiny(arms=["random", "tsp"]), tmp_path / "sim", progress=False)
    assert calls == []  # a finished run repeats nothing
    with pytest.raises(ValueError, match="other settings.*budget"):
        run_simulation(data, _tiny(arms=["random", "tsp"], budget=4), tmp_path / "sim", progress=False)


# ----------------------------------------------------------------------------- bad input
def _coco_with(tmp_path: Path, series: Path, mutate) -> Path:
    doc = json.loads(series.read_text())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["images"][0].update(file_name="images/nope.png"), "1 of 40 images are missing under"),
    (lambda d: [a.pop("segmentation") for a in d["annotations"]], "have no segmentation"),
    (lambda d: d["annotations"][0].update(category_id=99), "category ids [99] not listed in 'categories'"),
    (lambda d: d.update(annotations=[]), "no annotations"),
])
def test_bad_coco_files_are_one_clear_line(series, tmp_path, mutate, message):
    bad = _coco_with(tmp_path, series, mutate)
    res = CliRunner().invoke(cli, ["simulate", "--coco", str(bad), "--images", str(series.parent),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.output
    assert "Traceback" not in res.output


def test_the_design_is_chosen_once_on_validation_and_reused(series, tmp_path, monkeypatch):
    """Issue 23: one design over all seeds, written once; a later process in the same folder (one
    seed each) and another run (--design-from) reuse it and tune nothing."""
    import tsp_model.simulation.replay as replay
    from tsp_model.engine.checkpoint import load_checkpoint
    from tsp_model.simulation.ledger import Ledger

    calls: list[str] = []
    real = replay.run_cycle

    def counting(*args, **kwargs):
        calls.append(str(kwargs["out_dir"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(replay, "run_cycle", counting)
    settings = _tiny(arms=["tsp", "tsp+pseudo0"], seeds=[0, 1], tune=True, validation=0.25,
                     model_candidates=[{"norm": "batch"}, {"norm": "group"}], tune_candidates=[[0.5, "constant"]],
                     show_thresholds=[0.4], keep_checkpoints=True)
    data, _ = load_simulation_data(series, None, settings)
    assert data.validation is not None and len(data.validation) > 0
    design = run_simulation(data, settings, tmp_path / "sim", progress=False, design_only=True)
    # 2 variants x 2 seeds x (M_1 + one cycle-2 model); the S_i candidate is the variant's default
    assert len(calls) == 8
    assert set(design["models"]) == {"batch_mt0.3", "group_mt0.3"}
    assert all(len(v["per_seed"]) == 2 for v in design["models"].values())
    best = max(design["models"].values(), key=lambda v: v["mean"])
    assert design["chosen"]["norm"] == best["settings"]["norm"]
    cal = design["per_seed"]["seed0"]["group_mt0.3"]["cycle2_calibration"]
    assert set(cal["detected"]["spearman_mask_iou"]) == {"c", "b", "m", "s"}
    assert (tmp_path / "sim" / "design.json").is_file()

    # one process per seed in the same folder: the design is read, not chosen again on one seed
    calls.clear()
    for seed in (0, 1):
        doc = run_simulation(data, _tiny(**{**settings.__dict__, "seeds": [seed]}), tmp_path / "sim", progress=False)
        assert doc["design"] == design and doc["chosen"]["norm"] == design["chosen"]["norm"]
    assert len(calls) == 4  # the two arms' cycle-2 models per seed; M_1 comes from the design
    assert isinstance(doc["commit"], str) and len(doc["commit"].split("+")[0]) == 40
    cal = doc["calibration"]["seed1"]
    assert set(cal) == {"cycle1", "cycle2"} and cal["cycle2"]["detected"]["detections"] >= 0
    ledger = Ledger(tmp_path / "sim" / "ledger.jsonl")
    pseudo0 = ledger.get("seed1/tsp+pseudo0/cycle2")
    assert load_checkpoint(pseudo0["checkpoint"])["config"]["model"]["semi_loss_weight"] == 0.0
    tsp = ledger.get("seed1/tsp/cycle2")
    assert load_checkpoint(tsp["checkpoint"])["config"]["model"]["semi_loss_weight"] == 0.01
    assert pseudo0["selected_ids"] == tsp["selected_ids"]  # same M_1, same strategy

    # another run takes the design as it is
    calls.clear()
    other = _tiny(arms=["tsp"], seeds=[2], design_from=str(tmp_path / "sim"), validation=0.25)
    doc = run_simulation(load_simulation_data(series, None, other)[0], other, tmp_path / "other", progress=False)
    assert doc["design"]["from"] == str(tmp_path / "sim") and doc["chosen"]["norm"] == design["chosen"]["norm"]
    assert len(calls) == 2  # M_1 and tsp's cycle 2 of seed 2: nothing tuned


def test_simulate_pretrains_the_backbone_and_starts_every_model_from_it(series, tmp_path):
    """Issue 26: --pretrain trains a self-supervised backbone on the pool's slices once (ledgered,
    with its cost), every model of the run starts from it, and TypiClust's embedding is chosen on
    the validation split between thumbnails and the pretrained backbone."""
    from tsp_model.engine.checkpoint import load_checkpoint
    from tsp_model.simulation.ledger import Ledger

    settings = _tiny(arms=["random", "random+typiclust"], pretrain=True, pretrain_epochs=2, tune=True, validation=0.25,
                     tune_candidates=[[0.5, "constant"]], show_thresholds=[0.4], keep_checkpoints=True)
    data, _ = load_simulation_data(series, None, settings)
    doc = run_simulation(data, settings, tmp_path / "sim", progress=False)
    pre = doc["pretrain"]
    assert pre["method"] == "simsiam" and pre["epochs"] == 2 and pre["slices"] == len(data.pool)
    assert pre["cost"]["views_per_second"] > 0 and len(pre["loss"]) == 2
    backbone = load_checkpoint(pre["checkpoint"])["model"]
    ledger = Ledger(tmp_path / "sim" / "ledger.jsonl")
    model = load_checkpoint(ledger.get("seed0/random/cycle2")["checkpoint"])
    assert model["config"]["model"]["weights_backbone"] == pre["checkpoint"]
    assert model["config"]["model"]["norm"] == "group"  # GroupNorm weights: no running statistics
    assert set(doc["design"]["typiclust"]) == {"thumbnail", "pretrained"}
    assert doc["chosen"]["typiclust_embedding"] in ("thumbnail", "pretrained")
    assert {r["arm"] for r in doc["runs"]} == {"random", "random+typiclust"}
    assert any(k.startswith("body.") for k in backbone) and any(k.startswith("fpn.") for k in backbone)


def test_the_backbone_is_pretrained_with_the_norm_its_detectors_use():
    """A backbone pretrained with GroupNorm and fine-tuned with BatchNorm starts from affine weights
    without their running statistics: the pretraining takes the model candidates' norm when they
    agree (the pretrained regime's single candidate is the scratch run's choice)."""
    from tsp_model.simulation.run import pretrain_norm

    one = _tiny(model_candidates=[{"norm": "batch", "mask_threshold": 0.3}])
    assert pretrain_norm(one) == "batch"
    same = _tiny(model_candidates=[{"norm": "batch", "mask_threshold": 0.3}, {"norm": "batch", "mask_threshold": 0.5}])
    assert pretrain_norm(same) == "batch"
    mixed = _tiny(norm="auto", model_candidates=[{"norm": "batch"}, {"norm": "group"}])
    assert pretrain_norm(mixed) == "auto"
    assert pretrain_norm(_tiny(norm="group")) == "group"
