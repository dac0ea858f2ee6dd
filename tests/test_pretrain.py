"""Self-supervised pretraining (SimSiam): views that keep CT intensities meaningful, a resumable
run whose checkpoint the detector's backbone loads, `tsp-sync pretrain` on a project's snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import write_tiny_coco
from tsp_model.core.config import ModelConfig, TSPConfig
from tsp_model.engine.checkpoint import load_checkpoint
from tsp_model.engine.pretrain import TwoViews, pretrain, pretrained_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("slices")
    write_tiny_coco(root, count=12, seed=4)
    return sorted((root / "images").glob("*.png"))


def _config(epochs: int = 2) -> TSPConfig:
    cfg = TSPConfig()
    cfg.model.backbone, cfg.model.min_size, cfg.model.max_size = "tiny_fpn", 64, 64  # type: ignore[assignment]
    cfg.pretrain.epochs, cfg.pretrain.batch_size, cfg.pretrain.workers, cfg.pretrain.amp = epochs, 4, 0, False
    cfg.pretrain.checkpoint_every_s = 0.0
    return cfg


def test_views_keep_a_grey_window_grey_and_in_range():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 40, 50, generator=g).expand(3, 40, 50).clone()  # a grey window: 3 equal channels
    views = TwoViews([], size=32, crop_scale=(0.3, 1.0), intensity=0.2)
    for k in range(20):
        v = views.view(image, torch.Generator().manual_seed(k))
        assert v.shape == (3, 32, 32) and float(v.min()) >= 0.0 and float(v.max()) <= 1.0
        assert torch.equal(v[0], v[1]) and torch.equal(v[1], v[2])  # no colour jitter
    # no crop, no intensity change: the slice resized, possibly mirrored
    plain = TwoViews([], size=40, crop_scale=(1.0, 1.0), intensity=0.0)
    square = torch.rand(3, 40, 40, generator=g)
    for k in range(6):
        v = plain.view(square, torch.Generator().manual_seed(k))
        assert torch.allclose(v, square, atol=1e-6) or torch.allclose(v, square.flip(-1), atol=1e-6)


def test_a_killed_pretraining_resumes_and_the_backbone_loads_it(slices, tmp_path, monkeypatch):
    import tsp_model.engine.pretrain as module

    out = tmp_path / "backbone.pt"
    calls = {"n": 0}
    real = module.SimSiam.forward

    def dying(self, x1, x2):
        calls["n"] += 1
        if calls["n"] == 4:  # 12 slices, batches of 4: step 1 of epoch 2
            raise KeyboardInterrupt
        return real(self, x1, x2)

    monkeypatch.setattr(module.SimSiam, "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(), slices, out, progress=False)
    partial = load_checkpoint(out.with_name(out.name + ".partial"))
    assert partial["epoch"] == 1 and not out.exists()
    monkeypatch.setattr(module.SimSiam, "forward", real)
    pretrain(_config(), slices, out, progress=False)
    state = load_checkpoint(out)
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["history"][0] == partial["history"][0]  # the finished epoch was not run again
    assert state["data"]["images"] == 12 and state["pretrain"]["method"] == "simsiam"
    assert state["cost"]["views_per_second"] > 0 and "pretrain_state" not in state
    assert not out.with_name(out.name + ".partial").exists()
    # the detector starts from it: backbone body and FPN, GroupNorm (trained without running statistics)
    from tsp_model.nn.model import build_model

    model = build_model(ModelConfig(backbone="tiny_fpn", min_size=64, max_size=64, weights_backbone=str(out)), 3)
    own = model.backbone.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state["model"].items())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.body.modules())
    emb = pretrained_embeddings(out, slices[:3])
    assert emb.shape == (3, 320) and torch.allclose(torch.from_numpy(emb).norm(dim=1), torch.ones(3), atol=1e-5)


def test_tsp_sync_pretrain_on_a_snapshot(tmp_path):
    from click.testing import CliRunner

    from tests.test_cli_retrain import make_snapshot
    from tsp_cli.main import cli

    wd = make_snapshot(tmp_path, labeled=3, total=8)
    toml = tmp_path / "tsp.toml"
    toml.write_text(f'[projects.t]\nlabel_studio_project = 1\nworkdir = "{wd.root}"\n'
                    '[projects.t.model]\nbackbone = "tiny_fpn"\nmin_size = 64\nmax_size = 64\n'
                    '[projects.t.pretrain]\nepochs = 2\nbatch_size = 4\nworkers = 0\namp = false\n')
    res = CliRunner().invoke(cli, ["--no-progress", "--config", str(toml), "pretrain", "--project", "t"])
    assert res.exit_code == 0, res.output
    state = json.loads(wd.state_path.read_text())["last_pretrain"]
    assert state["slices"] == 8 and state["epochs"] == 2  # labeled and unlabeled slices alike
    assert Path(state["checkpoint"]).is_file() and f'weights_backbone = "{state["checkpoint"]}"' in res.output
