"""Training: the loss falls, a killed run resumes to the same weights, NaN stops the run."""


import pytest
import torch

from helpers import TinyShapes, tiny_config
from tsp_model.engine.checkpoint import load_checkpoint, load_model
from tsp_model.engine.train import MixedBatchSampler, NonFiniteLossError, partial_path, train


def test_loss_falls_on_tiny_data(tmp_path):
    # 2 images, batch 2: 1 step per epoch, 12 steps; mean of the first 3 vs the last 3
    # (seeds 0-2 gave ratios 0.26-0.36)
    cfg = tiny_config(epochs=12, lr=0.02, hflip_prob=0.0)
    out = train(cfg, TinyShapes(count=2, seed=0), out_path=tmp_path / "m.pt", progress=False)
    hist = load_checkpoint(out)["history"]
    assert [h["epoch"] for h in hist] == list(range(1, 13))
    first = sum(h["loss"] for h in hist[:3]) / 3
    last = sum(h["loss"] for h in hist[-3:]) / 3
    assert last < 0.6 * first, (first, last)


def test_checkpoint_contents_and_load_model(tmp_path):
    cfg = tiny_config(epochs=1)
    ds = TinyShapes(count=2)
    out = train(cfg, ds, out_path=tmp_path / "m.pt", model_version="cycle-1", progress=False)
    state = load_checkpoint(out)
    for key in ("model", "optimizer", "scheduler", "scaler", "config", "class_names", "epoch", "model_version", "history"):
        assert key in state, key
    assert state["epoch"] == 1 and state["model_version"] == "cycle-1"
    assert state["class_names"] == ["box", "disk"]
    assert not partial_path(out).exists()
    loaded = load_model(out)
    assert not loaded.model.training and loaded.class_names == ["box", "disk"]
    assert loaded.config.model.backbone == "tiny_fpn"
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    cfg = tiny_config(epochs=3, lr=0.01, checkpoint_every_s=0.0)  # a resume file after every epoch
    ds = TinyShapes(count=4, seed=1)
    straight = load_checkpoint(train(cfg, ds, out_path=tmp_path / "a.pt", progress=False))

    class Killed(Exception):
        pass

    def kill_after_two(epoch, model, stats):
        if epoch == 2:
            raise Killed

    out = tmp_path / "b.pt"
    with pytest.raises(Killed):
        train(cfg, ds, out_path=out, on_epoch_end=kill_after_two, progress=False)
    # epoch 2's hook raised before its save: the partial file holds epoch 1
    assert not out.exists()
    part = load_checkpoint(partial_path(out))
    assert part["epoch"] == 1 and part["optimizer"]["state"]  # momentum buffers saved

    seen = []
    train(cfg, ds, out_path=out, resume=True, on_epoch_end=lambda e, m, s: seen.append(e), progress=False)
    resumed = load_checkpoint(out)
    assert seen == [2, 3]
    assert resumed["epoch"] == 3 and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert not partial_path(out).exists()
    for k, v in straight["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-6), k
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]])


def test_resume_extends_a_finished_run(tmp_path):
    ds = TinyShapes(count=2)
    out = train(tiny_config(epochs=1), ds, out_path=tmp_path / "m.pt", progress=False)
    train(tiny_config(epochs=2), ds, out_path=out, resume=True, progress=False)
    state = load_checkpoint(out)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert state["scheduler"]["last_epoch"] == 2


def test_non_finite_loss_stops_with_clear_error(tmp_path):
    ds = TinyShapes(count=2)
    cfg = tiny_config(epochs=1)
    init = train(cfg, ds, out_path=tmp_path / "m.pt", progress=False)
    state = load_checkpoint(init)
    # poison the weights: every forward pass now yields NaN losses
    state["model"] = {k: (v.fill_(float("nan")) if v.is_floating_point() else v) for k, v in state["model"].items()}
    from tsp_model.engine.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "nan.pt", state)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 1 step 1: .*loss_classifier=nan"):
        train(cfg, ds, init_checkpoint=tmp_path / "nan.pt", out_path=tmp_path / "x.pt", progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_pseudo_images_are_added_on_top_of_the_labeled_batches():
    """Issue 23: the +pseudo arm must train the same labeled batches for the same number of steps
    as the arm without pseudo labels, the pseudo-labeled images added to each batch."""
    for epoch in (0, 1):
        plain = MixedBatchSampler(6, 0, batch_size=2, seed=3)
        mixed = MixedBatchSampler(6, 242, batch_size=2, seed=3)
        plain.set_epoch(epoch)
        mixed.set_epoch(epoch)
        p, m = list(plain), list(mixed)
        # 6 labeled images, 2 per batch: ceil(6 / 2) = 3 steps either way, not ceil(248 / 2) = 124
        assert len(p) == len(m) == len(plain) == len(mixed) == 3
        assert sorted(i for b in p for i in b) == [0, 1, 2, 3, 4, 5]  # one pass over the labeled set
        assert [b[:2] for b in m] == p  # the same labeled images in the same batches
        assert all(len(b) == 4 and all(6 <= i < 248 for i in b[2:]) for b in m)  # + 2 pseudo images
        assert len({i for b in m for i in b[2:]}) == 6  # 6 different pseudo images this epoch
    # pseudo_per_batch sets how many are added; the labeled part does not move
    one = list(MixedBatchSampler(6, 242, batch_size=2, pseudo_per_batch=1, seed=3))
    assert [b[:2] for b in one] == list(MixedBatchSampler(6, 0, batch_size=2, seed=3))
    assert all(len(b) == 3 for b in one)
    # two ranks: global batch j goes to rank j % 2; together one pass over the labeled images
    ranks = [list(MixedBatchSampler(3, 9, batch_size=2, num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [1, 1]  # ceil(3 / (2 x 2)) = 1 batch per rank
    assert {i for r in ranks for b in r for i in b[:2]} == {0, 1, 2}
    assert all(len(b) == 4 and all(i >= 3 for i in b[2:]) for r in ranks for b in r)
    assert list(MixedBatchSampler(3, 9, batch_size=2, seed=0)) == list(MixedBatchSampler(3, 9, batch_size=2, seed=0))


def test_cli_entry_trains_with_pseudo_labels_and_evaluates(tmp_path, capsys):
    from helpers import write_tiny_coco
    from tsp_model.core.config import dump_toml
    from tsp_model.data.coco import CocoInstanceDataset
    from tsp_model.engine.evaluate import evaluate
    from tsp_model.engine.predict import PoolDataset, score_pool
    from tsp_model.engine.train import main

    ann = write_tiny_coco(tmp_path / "data", count=4, seed=2)
    cfg = tiny_config(epochs=1)
    cfg.model.box_detections_per_img = 3
    cfg.active.sigma_c = cfg.active.sigma_b = cfg.active.sigma_m = 0.0
    (tmp_path / "cfg.toml").write_text(dump_toml(cfg))
    base = ["--config", str(tmp_path / "cfg.toml"), "--labeled", str(ann), "--images", str(tmp_path / "data" / "images")]
    assert main(base + ["--out", str(tmp_path / "m1.pt")]) == 0

    loaded = load_model(tmp_path / "m1.pt")
    pool = PoolDataset.from_folder(tmp_path / "data" / "images")
    scores = score_pool(loaded.model, pool, class_names=loaded.class_names, config=loaded.config,
                        out_path=tmp_path / "s.jsonl", model_version=loaded.model_version, progress=False)
    pseudo = ["--pseudo", str(scores), "--pseudo-images", str(tmp_path / "data" / "images")]
    assert main(base + pseudo + ["--init", str(tmp_path / "m1.pt"), "--out", str(tmp_path / "m2.pt")]) == 0
    assert load_checkpoint(tmp_path / "m2.pt")["data"]["pseudo"] > 0

    metrics = evaluate(load_model(tmp_path / "m2.pt").model, CocoInstanceDataset(ann, tmp_path / "data" / "images"), batch_size=2, progress=False)
    assert set(metrics["segm_ap50_per_class"]) == {"box", "disk"}
    assert 0.0 <= metrics["segm_ap50"] <= 1.0 and metrics["num_images"] == 4

    capsys.readouterr()
    assert main(base[:2] + ["--labeled", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.pt")]) == 1
    assert "nope.json" in capsys.readouterr().err


def test_warmup_and_lr_scaling(tmp_path):
    # 2 images, batch 2: one step per epoch. Warmup factor 0.001 + 0.999 * it / warmup_iters:
    # step 0 -> 0.001, step 1 -> 0.5005; afterwards the scheduled lr is restored.
    # scale_lr with one process: lr * 1 / 8.
    cfg = tiny_config(epochs=3, lr=0.08, warmup_iters=2, scale_lr=True)
    state = load_checkpoint(train(cfg, TinyShapes(count=2), out_path=tmp_path / "m.pt", progress=False))
    lrs = [h["lr"] for h in state["history"]]
    assert lrs == pytest.approx([0.01 * 0.001, 0.01 * 0.5005, 0.01])
    # lr_steps = [1.0] fraction -> decay after epoch 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)


def test_resume_file_is_written_at_most_every_checkpoint_every_s(tmp_path, monkeypatch):
    """Short epochs (a few labeled images) must not spend their time saving: with a long interval
    no resume file is written between epochs, with 0 one after every epoch but the last."""
    import tsp_model.engine.train as train_mod

    saved = []
    real = train_mod.save_checkpoint
    monkeypatch.setattr(train_mod, "save_checkpoint", lambda path, state: saved.append((path.name, state["epoch"]))
                        or real(path, state))
    ds = TinyShapes(count=2, seed=1)
    train(tiny_config(epochs=3, checkpoint_every_s=3600.0), ds, out_path=tmp_path / "a.pt", progress=False)
    assert saved == [("a.pt", 3)]
    saved.clear()
    train(tiny_config(epochs=3, checkpoint_every_s=0.0), ds, out_path=tmp_path / "b.pt", progress=False)
    assert saved == [("b.pt.partial", 1), ("b.pt.partial", 2), ("b.pt", 3)]
