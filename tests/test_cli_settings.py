"""tsp-sync without a server: settings, secrets, annotation conversion, holdout split, snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils

from tsp_cli.client import SyncError
from tsp_cli.commands.pull import choose_annotation
from tsp_labelstudio.regions import RegionError, region_to_rle
from tsp_cli.commands.retrain import holdout_split, pseudo_counts
from tsp_cli.settings import ConfigError, find_settings_file, load_secrets, load_settings, select_project
from tsp_cli.workdir import Workdir, atomic_write_json

GOOD = """
[projects.ich]
label_studio_project = "ICH"
workdir = "work/ich"
config = "train.toml"
holdout_fraction = 0.2

[projects.ich.train]
epochs = 3

[projects.other]
label_studio_project = 7
"""


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    (tmp_path / "train.toml").write_text('[model]\nbackbone = "tiny_fpn"\n[train]\nepochs = 9\nbatch_size = 4\n')
    path = tmp_path / "tsp.toml"
    path.write_text(GOOD)
    return path


def test_settings_resolve_paths_and_merge_train_config(settings_file: Path) -> None:
    projects = load_settings(settings_file)
    ich = projects["ich"]
    base = settings_file.parent.resolve()
    assert ich.label_studio_project == "ICH"
    assert ich.workdir == base / "work/ich" and ich.model_dir == base / "work/ich/models"
    assert ich.holdout_fraction == 0.2
    cfg = ich.train_config()
    # the inline table wins over the file, the file over the defaults
    assert (cfg.model.backbone, cfg.train.epochs, cfg.train.batch_size) == ("tiny_fpn", 3, 4)
    other = projects["other"]
    assert other.label_studio_project == 7 and other.workdir == base / "tsp-work" / "other"
    assert other.train_config().train.epochs == 50  # the paper's default


def test_select_project_by_name_or_id(settings_file: Path, tmp_path: Path) -> None:
    projects = load_settings(settings_file)
    assert select_project(projects, "ich").name == "ich"
    assert select_project(projects, "7").name == "other"  # a configured id
    free = select_project(projects, "42", base=tmp_path)
    assert free.label_studio_project == 42 and free.workdir == tmp_path / "tsp-work" / "42"
    with pytest.raises(ConfigError, match="'nope': not a configured project"):
        select_project(projects, "nope")


@pytest.mark.parametrize(
    "text, match",
    [
        ("[projects.a]\nworkdir = 'x'\n", "projects.a.label_studio_project: missing"),
        ("[projects.a]\nlabel_studio_project = 1\nwrkdir = 'x'\n", "projects.a.wrkdir: unknown key"),
        ("[projects.a]\nlabel_studio_project = 1\nholdout_fraction = 1.5\n", "holdout_fraction"),
        ("[projects.a]\nlabel_studio_project = 1\n[projects.a.train]\nepochs = 0\n", "train.epochs: must be >= 1"),
        ("[projects.a]\nlabel_studio_project = 1\nconfig = 'missing.toml'\n", "config file not found"),
        ("projects = 3\n", "expected \\[projects.<name>\\] tables"),
        ("[projects.a\n", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "tsp.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(path)


def test_settings_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TSP_CONFIG", raising=False)
    assert find_settings_file(None) is None
    (tmp_path / "tsp.toml").write_text("")
    assert find_settings_file(None) == tmp_path / "tsp.toml"
    env_file = tmp_path / "other.toml"
    env_file.write_text("")
    monkeypatch.setenv("TSP_CONFIG", str(env_file))
    assert find_settings_file(None) == env_file
    monkeypatch.setenv("TSP_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="TSP_CONFIG"):
        find_settings_file(None)


def test_secrets_from_env_and_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="LABEL_STUDIO_URL is not set"):
        load_secrets()
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls:8080/")
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY is not set"):
        load_secrets()
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "s3cret-token")
    secrets = load_secrets()
    assert secrets.url == "http://ls:8080" and secrets.api_key == "s3cret-token"
    assert "s3cret" not in repr(secrets) and "s3cret" not in str(secrets)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    from tsp_cli.main import cli

    (tmp_path / "tsp.toml").write_text("[projects.a]\nlabel_studio_project = 1\n")
    env = {"TSP_CONFIG": str(tmp_path / "tsp.toml"), "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": ""}
    r = CliRunner().invoke(cli, ["pull", "--project", "a"], env=env)
    assert r.exit_code == 1
    assert r.output == "Error: LABEL_STUDIO_URL is not set; export LABEL_STUDIO_URL=http://host:8080\n"
    r = CliRunner().invoke(cli, ["status", "--project", "zzz"], env=env)
    assert r.exit_code == 1 and r.output.startswith("Error: --project 'zzz'") and "Traceback" not in r.output


# ------------------------------------------------------------------ annotations -> COCO
def test_choose_annotation_rules() -> None:
    old = {"id": 1, "updated_at": "2026-01-01", "result": [1]}
    new = {"id": 2, "updated_at": "2026-02-01", "result": [2]}
    cancelled = {"id": 3, "updated_at": "2026-03-01", "was_cancelled": True}
    gt = {"id": 4, "updated_at": "2025-01-01", "ground_truth": True}
    assert choose_annotation([]) == (None, False)  # untouched task: pool
    assert choose_annotation([cancelled]) == (None, True)  # skipped: pool, counted as skipped
    assert choose_annotation([old, new, cancelled]) == (new, False)
    assert choose_annotation([old, new, gt]) == (gt, False)
    empty = {"id": 5, "result": []}
    assert choose_annotation([empty]) == (empty, False)  # "no lesion" is a label


def test_brush_region_roundtrip() -> None:
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[1:4, 2:7] = 1  # 3 rows x 5 columns
    region = {"type": "brushlabels", "original_width": 8, "original_height": 6,
              "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask * 255)], "brushlabels": ["subdural"]}}
    label, rle = region_to_rle(region, 8, 6, "t")
    assert label == "subdural"
    decoded = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded, mask)
    assert list(mask_utils.toBbox({**rle, "counts": rle["counts"].encode()})) == [2, 1, 5, 3]
    with pytest.raises(RegionError, match="8x6 image but the task image is 16x12"):
        region_to_rle(region, 16, 12, "t")


def test_polygon_region_percent_to_pixels() -> None:
    # a 50% x 50% square at (25%, 25%) of a 40 x 20 image: x 10..30, y 5..15
    region = {"type": "polygonlabels", "value": {"points": [[25, 25], [75, 25], [75, 75], [25, 75]],
                                                  "polygonlabels": ["epidural"]}}
    label, rle = region_to_rle(region, 40, 20, "t")
    assert label == "epidural"
    x, y, w, h = mask_utils.toBbox({**rle, "counts": rle["counts"].encode()})
    assert (x, y, w, h) == (10, 5, 20, 10)
    assert mask_utils.area({**rle, "counts": rle["counts"].encode()}) == 200


def test_region_without_label_is_an_error() -> None:
    region = {"type": "polygonlabels", "value": {"points": [[0, 0], [50, 0], [50, 50]], "polygonlabels": []}}
    with pytest.raises(RegionError, match="region without a label"):
        region_to_rle(region, 10, 10, "task 3")


# ------------------------------------------------------------------ split, pseudo counts, snapshots
def test_holdout_split_is_stable_and_non_empty() -> None:
    ids = list(range(1, 41))
    train, held = holdout_split(ids, 0.25)
    assert set(train) | set(held) == set(ids) and not set(train) & set(held)
    assert 1 <= len(held) < 40
    # adding tasks never moves an old one across the split
    train2, held2 = holdout_split(ids + list(range(41, 81)), 0.25)
    assert set(held) <= set(held2) and set(train) <= set(train2)
    assert holdout_split([5], 0.5) == ([5], [])
    assert holdout_split(ids, 0.0) == (ids, [])


def test_pseudo_counts_follow_the_thresholds() -> None:
    from tsp_model.core.records import ImageScore, InstanceScore

    rle = {"size": [4, 4], "counts": "0"}

    def inst(c, b, m):
        return InstanceScore(label=1, category="a", box=[0, 0, 2, 2], c=c, b=b, m=m, s=0.0, mask=rle)

    records = [
        ImageScore(image_id=1, file_name="a", width=4, height=4, S=0.0,
                   instances=[inst(0.95, 0.95, 0.85), inst(0.95, 0.95, 0.79)]),  # 1 kept (m <= 0.8)
        ImageScore(image_id=2, file_name="b", width=4, height=4, S=0.0,
                   instances=[inst(0.91, 0.92, 0.81), inst(0.99, 0.99, 0.99)]),  # 2 kept
        ImageScore(image_id=3, file_name="c", width=4, height=4, S=1.0, instances=[]),
        ImageScore(image_id=4, file_name="d", width=4, height=4, S=0.0, instances=[inst(0.9, 0.99, 0.99)]),  # c not > 0.9
    ]
    assert pseudo_counts(records, 0.9, 0.9, 0.8) == (2, 3)


def test_latest_snapshot_pointer_and_temporaries(tmp_path: Path) -> None:
    wd = Workdir(tmp_path)
    assert wd.latest_snapshot(required=False) is None
    with pytest.raises(SyncError, match="run tsp-sync pull first"):
        wd.latest_snapshot()
    for expected in (1, 2):
        number, tmp = wd.new_snapshot_dir()
        assert number == expected and tmp.name.startswith(".tmp-")
        atomic_write_json(tmp / "manifest.json", {"class_names": ["a"], "n": number})
        snap = wd.commit_snapshot(tmp, number)
        assert snap.manifest["n"] == number
    # an interrupted pull leaves a temp folder: ignored by readers, removed by the next pull
    leftover = wd.snapshots / ".tmp-3-abc"
    leftover.mkdir()
    assert wd.latest_snapshot().number == 2
    (wd.snapshots / "latest").unlink()  # pointer lost: newest complete snapshot
    assert wd.latest_snapshot().number == 2
    old = os.umask(0o022)
    try:
        number, tmp = wd.new_snapshot_dir()
    finally:
        os.umask(old)
    assert number == 3 and not leftover.exists()
    assert os.stat(tmp).st_mode & 0o777 == 0o755  # readable by the backend's user, unlike mkdtemp's 0700


def test_format_table_and_status_text(tmp_path: Path) -> None:
    from tsp_cli.commands.cycle import format_table

    summary = {"snapshot": 3, "labeled": 10, "instances": 14, "empty": 4, "pool": 90, "pseudo_images": 5,
               "pseudo_instances": 7, "model_version": "tsp-x", "metrics": {"segm_ap50": 0.4567}, "holdout": 3,
               "verify": {"honored": True, "next_task": 17}, "top": [{"task": 17, "S": 0.12345}, {"task": 4, "S": 0.2}],
               "seconds": {"pull": 1.0}}
    text = format_table(summary)
    assert "0.457 mask AP50 on 3 held-out" in text
    assert "17 (0.123), 4 (0.200)" in text
    assert "5 images, 7 instances" in text
    assert "task 17 = lowest S" in text
