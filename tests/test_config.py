"""The configuration tree: paper defaults, TOML round trip, and errors that name the key."""

import pytest

from tsp_model.core.config import (
    ConfigError,
    TrainConfig,
    TSPConfig,
    dump_toml,
    load_config,
    lr_milestones,
)


def test_defaults_are_the_papers():
    cfg = load_config()
    assert cfg == TSPConfig()
    # section 4.2: SGD lr 0.001, momentum 0.9, weight decay 0.0001, 50 epochs, decay at 45 and 49
    assert cfg.train.lr == 0.001
    assert cfg.train.momentum == 0.9
    assert cfg.train.weight_decay == 1e-4
    assert cfg.train.epochs == 50
    assert cfg.train.lr_steps == [45, 49] and cfg.train.lr_steps_unit == "epoch"
    assert cfg.train.lr_gamma == 0.1
    assert cfg.train.hflip_prob > 0  # random horizontal flip
    # eq. 1 lambda = 1, eq. 5 beta = 0.01, masks binarized at 0.3 (section 3.1)
    assert cfg.model.iou_loss_weight == 1.0
    assert cfg.model.semi_loss_weight == 0.01
    assert cfg.model.mask_threshold == 0.3
    # section 3.2 / 4.2 thresholds, b = 500 per cycle
    assert (cfg.active.sigma_c, cfg.active.sigma_b, cfg.active.sigma_m) == (0.9, 0.9, 0.8)
    assert cfg.active.budget == 500
    assert cfg.active.strategy == "tsp"


def test_toml_round_trip(tmp_path):
    cfg = load_config(
        overrides={
            "model": {"backbone": "tiny_fpn", "min_size": 64, "max_size": 64, "weights": "/w/x.pth"},
            "train": {"epochs": 3, "lr": 2.5e-05, "lr_steps": [0.5, 0.9], "lr_steps_unit": "fraction",
                      "pseudo_per_batch": 3, "clip_grad_norm": 2.5, "device": 'cu"da\\1'},
            "active": {"budget": 20, "strategy": "random", "empty_image_score": 0.0},
            "score": {"store_masks": False},
        }
    )
    path = tmp_path / "cfg.toml"
    path.write_text(dump_toml(cfg))
    back = load_config(path)
    assert back == cfg
    assert back.train.pseudo_per_batch == 3 and back.train.lr == 2.5e-05
    assert back.train.device == 'cu"da\\1'
    # defaults round-trip too
    path.write_text(dump_toml(TSPConfig()))
    assert load_config(path) == TSPConfig()


def test_clip_grad_norm_zero_disables_and_round_trips(tmp_path):
    cfg = load_config(overrides={"train": {"clip_grad_norm": 0.0}})
    path = tmp_path / "cfg.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path).train.clip_grad_norm == 0.0
    with pytest.raises(ConfigError, match="train.clip_grad_norm"):
        load_config(overrides={"train": {"clip_grad_norm": None}})


def test_string_with_control_characters_round_trips(tmp_path):
    cfg = load_config(overrides={"train": {"device": "a\nb"}})
    path = tmp_path / "cfg.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path).train.device == "a\nb"


def test_fractional_epoch_steps_are_rejected():
    with pytest.raises(ConfigError, match="train.lr_steps"):
        load_config(overrides={"train": {"lr_steps": [45.5]}})


def test_toml_file_and_overrides_merge(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[train]\nepochs = 4\nlr = 0.01\n[active]\nbudget = 7\n')
    cfg = load_config(path, overrides={"train": {"lr": 0.02}})
    assert (cfg.train.epochs, cfg.train.lr, cfg.active.budget) == (4, 0.02, 7)
    assert cfg.train.momentum == 0.9  # untouched keys keep defaults
    assert isinstance(cfg.train.lr_steps[0], float)


def test_unknown_key_names_dotted_key(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text("[train]\nlrr = 0.1\n")
    with pytest.raises(ConfigError, match=r"cfg\.toml: train\.lrr: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^trian: unknown key"):
        load_config(overrides={"trian": {"lr": 0.1}})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"train": {"epochs": "fifty"}}, "train.epochs"),
        ({"train": {"epochs": True}}, "train.epochs"),  # bool is not an int here
        ({"train": {"lr": "0.1"}}, "train.lr"),
        ({"train": {"lr_steps": [45, "x"]}}, r"train.lr_steps\[1\]"),
        ({"train": {"lr_steps": 45}}, "train.lr_steps"),
        ({"model": {"backbone": "resnet999"}}, "model.backbone"),
        ({"score": {"store_masks": 1}}, "score.store_masks"),
        ({"model": 3}, "model"),
    ],
)
def test_wrong_type_names_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(overrides=overrides)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"model": {"mask_threshold": 1.5}}, "model.mask_threshold"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"lr_steps": [0.5, 1.5], "lr_steps_unit": "fraction"}}, "train.lr_steps"),
        ({"active": {"sigma_m": 1.2}}, "active.sigma_m"),
        ({"active": {"budget": 0}}, "active.budget"),
    ],
)
def test_out_of_range_names_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_config(overrides=overrides)


def test_lr_milestones_epoch_and_fraction():
    assert lr_milestones(TrainConfig()) == [45, 49]
    assert lr_milestones(TrainConfig(lr_steps=[49.0, 45.0, 45.0])) == [45, 49]  # sorted, unique
    # fraction of 50 epochs: 0.9 * 50 = 45, 0.98 * 50 = 49
    assert lr_milestones(TrainConfig(epochs=50, lr_steps=[0.9, 0.98], lr_steps_unit="fraction")) == [45, 49]
    # fraction of 10 epochs: 0.5 * 10 = 5, 0.8 * 10 = 8
    assert lr_milestones(TrainConfig(epochs=10, lr_steps=[0.5, 0.8], lr_steps_unit="fraction")) == [5, 8]
    # a tiny run never gets a milestone at epoch 0: 0.1 * 4 = 0.4 -> at least 1
    assert lr_milestones(TrainConfig(epochs=4, lr_steps=[0.1], lr_steps_unit="fraction")) == [1]


def test_missing_file_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
