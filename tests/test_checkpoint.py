"""Checkpoints: atomic writes, clear errors, model_version, newest-file lookup."""

import os
import time

import pytest
import torch

from tsp_model.engine import checkpoint as ckpt
from tsp_model.engine.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    make_model_version,
    save_checkpoint,
)


def _state(value: float = 1.0) -> dict:
    return {
        "model": {"w": torch.full((3,), value)},
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "config": {},
        "class_names": ["a"],
        "epoch": 1,
        "model_version": "v1",
    }


def test_save_then_load_roundtrip(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", _state(2.0))
    state = load_checkpoint(path)
    assert state["format"] == "tsp-checkpoint/1"
    assert torch.equal(state["model"]["w"], torch.full((3,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", _state(1.0))

    def broken_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(5.0))
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=r"bad\.pt: not a readable checkpoint"):
        load_checkpoint(bad)


def test_wrong_format_error(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a TSP checkpoint"):
        load_checkpoint(other)


def test_model_version_is_tied_to_weights():
    import datetime as dt

    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    a = make_model_version({"w": torch.ones(2)}, now)
    b = make_model_version({"w": torch.ones(2)}, now)
    c = make_model_version({"w": torch.zeros(2)}, now)
    assert a == b != c
    assert a.startswith("tsp-20260102T030405-") and len(a.split("-")[-1]) == 8


def test_latest_checkpoint_by_mtime(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    old = save_checkpoint(tmp_path / "b_old.pt", _state())
    new = save_checkpoint(tmp_path / "a_new.pt", _state())
    t = time.time()
    os.utime(old, (t - 100, t - 100))
    os.utime(new, (t, t))
    (tmp_path / ".a_new.pt.x.tmp").write_bytes(b"")
    (tmp_path / "run.pt.partial").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == new


def test_load_model_does_not_need_the_pretrained_file(tmp_path):
    """A checkpoint trained from local pretrained weights loads where that file is gone."""
    import torch

    from tsp_model.core.config import ModelConfig, TSPConfig
    from tsp_model.engine.checkpoint import load_model, save_checkpoint
    from tsp_model.nn.model import build_model

    init = tmp_path / "init.pt"
    cfg = ModelConfig(backbone="tiny_fpn", min_size=64, max_size=64)
    torch.save(build_model(cfg, 2).state_dict(), init)
    cfg.weights = str(init)
    model = build_model(cfg, 2)
    save_checkpoint(tmp_path / "m.pt", {
        "format": "tsp-checkpoint/1", "model": model.state_dict(), "config": TSPConfig(model=cfg).to_dict(),
        "class_names": ["lesion"], "epoch": 1, "model_version": "v1",
    })
    init.unlink()
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config.model.weights == str(init)  # the record of how it was trained is kept
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
