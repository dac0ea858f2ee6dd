"""`tsp-sync simulate` on exports of other tools: a CVAT-shaped COCO file (every mask instance
iscrowd 1 with uncompressed RLE, polygons iscrowd 0, category ids with gaps, frame paths, images
without annotations, attributes), and group keys that some images lack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tsp_cli.main import cli
from tsp_model.simulation import SimulationError, SimulationSettings
from tsp_model.simulation.data import load_simulation_data
from tsp_model.simulation.measure import label_stats

SIZE = 64


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (``counts`` a list of run lengths, column-major, zeros first), as
    CVAT's exporter writes it."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [SIZE, SIZE], "counts": counts}


def cvat_export(root: Path, n: int = 12, crowd_masks: bool = True) -> Path:
    """A COCO file shaped like CVAT's export: per annotated frame one brush mask (RLE, iscrowd 1)
    of category 1 and, on every third frame, one polygon (iscrowd 0) of category 3; two frames
    without annotations; category 2 is missing (ids with gaps) and 5 is unused."""
    images, anns = [], []
    for i in range(n):
        file_name = f"task_7/frames/frame_{i:06d}.png"
        img = np.full((SIZE, SIZE), 20, np.uint8)
        image = {"id": i + 1, "file_name": file_name, "width": SIZE, "height": SIZE, "license": 0, "flickr_url": "",
                 "coco_url": "", "date_captured": 0}
        images.append(image)
        if i >= n - 2:  # frames nobody drew on
            Image.fromarray(img).save(_path(root, file_name))
            continue
        mask = np.zeros((SIZE, SIZE), bool)
        y, x = 8 + (i * 5) % 30, 6 + (i * 7) % 30
        mask[y : y + 14, x : x + 18] = True
        img[mask] = 200
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": _uncompressed_rle(mask),
                     "area": float(mask.sum()), "bbox": [float(x), float(y), 18.0, 14.0],
                     "iscrowd": 1 if crowd_masks else 0, "attributes": {"occluded": False}})
        if i % 3 == 0:
            img[44:56, 40:54] = 150
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 3,
                         "segmentation": [[40.0, 44.0, 54.0, 44.0, 54.0, 56.0, 40.0, 56.0]],
                         "area": 168.0, "bbox": [40.0, 44.0, 14.0, 12.0], "iscrowd": 0,
                         "attributes": {"occluded": False}})
        Image.fromarray(img).save(_path(root, file_name))
    doc = {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {"contributor": "", "version": ""},
           "categories": [{"id": 1, "name": "epidural", "supercategory": ""},
                          {"id": 3, "name": "subdural", "supercategory": ""},
                          {"id": 5, "name": "intraparenchymal", "supercategory": ""}],
           "images": images, "annotations": anns}
    path = root / "annotations" / "instances_default.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _path(root: Path, file_name: str) -> Path:
    path = root / "images" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _settings(**kw) -> SimulationSettings:
    values = dict(arms=["random"], seeds=[0], budget=2, cycles=1, image_size=64, image_steps=8, min_epochs=1,
                  tune=False, validation=0.0, test=0.25, threads=1)
    values.update(kw)
    return SimulationSettings(**values)


def test_a_cvat_export_trains_on_its_masks_and_says_so(tmp_path):
    ann = cvat_export(tmp_path)
    data, _ = load_simulation_data(ann, tmp_path / "images", _settings())
    (note,) = data.description["notes"]
    assert "10 mask annotations have iscrowd 1" in note and "CVAT" in note and "--crowd ignore" in note
    # every drawn lesion is a training instance: the mask and, on every third frame, the polygon
    doc = json.loads(ann.read_text())
    per_image = {im["id"]: sum(a["image_id"] == im["id"] for a in doc["annotations"]) for im in doc["images"]}
    pool = data.pool
    for idx, image_id in enumerate(pool.ids):
        target = pool.load_target(idx)
        assert target["masks"].shape[0] == per_image[image_id], image_id
        if per_image[image_id]:
            assert int(target["masks"].sum()) >= 14 * 18  # the decoded list-form RLE, not an empty mask
    # the report counts what training reads
    stats = label_stats(pool, pool.ids, data.groups)
    assert stats["labeled_instances"] == sum(per_image[i] for i in pool.ids) > 0
    assert data.pool.class_names == ["epidural", "subdural", "intraparenchymal"]  # ids 1, 3, 5 -> labels 1, 2, 3


def test_the_command_prints_the_crowd_decision_and_replays(tmp_path):
    ann = cvat_export(tmp_path)
    res = CliRunner().invoke(cli, ["--no-progress", "simulate", "--coco", str(ann), "--images", str(tmp_path / "images"),
                                   "--out", str(tmp_path / "sim"), "--arms", "random", "--seeds", "0", "--budget", "2",
                                   "--cycles", "1", "--image-size", "64", "--image-steps", "4", "--min-epochs", "1",
                                   "--no-tune", "--validation", "0", "--test-fraction", "0.25", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "mask annotations have iscrowd 1, as CVAT's COCO export writes" in res.output
    doc = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert doc["runs"][0]["labeled_instances"] > 0


def test_crowds_ignored_as_coco_means_them_or_mixed_files_stop_with_one_line(tmp_path):
    ann = cvat_export(tmp_path)
    # COCO's meaning: every mask is a region to ignore; only the polygons remain to train on
    data, _ = load_simulation_data(ann, tmp_path / "images", _settings(crowd="ignore"))
    assert not data.description["notes"]
    instances = sum(data.pool.load_target(i)["masks"].shape[0] for i in range(len(data.pool)))
    assert instances == label_stats(data.pool, data.pool.ids, data.groups)["labeled_instances"]
    # a file of crowds only, ignored: nothing to train on is an error, not a silent zero
    doc = json.loads(ann.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["iscrowd"]]
    only = tmp_path / "only_crowd.json"
    only.write_text(json.dumps(doc))
    with pytest.raises(SimulationError, match="all 10 annotations are iscrowd 1.*--crowd instances"):
        load_simulation_data(only, tmp_path / "images", _settings(crowd="ignore"))
    # crowd masks beside ordinary ones: ambiguous, so "auto" asks
    doc = json.loads(ann.read_text())
    doc["annotations"][0]["iscrowd"] = 0
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(doc))
    with pytest.raises(SimulationError, match="9 of 14 annotations are iscrowd 1.*--crowd instances.*--crowd ignore"):
        load_simulation_data(mixed, tmp_path / "images", _settings())
    # "instances" takes them as lesions whatever the mix
    data, _ = load_simulation_data(mixed, tmp_path / "images", _settings(crowd="instances"))
    assert label_stats(data.pool, data.pool.ids, data.groups)["labeled_instances"] > 0


def test_a_group_key_some_images_lack_stops_unless_told_to_split_image_by_image(tmp_path):
    ann = cvat_export(tmp_path)
    doc = json.loads(ann.read_text())
    for im in doc["images"]:
        im["series_id"] = f"s{(im['id'] - 1) // 3}"
    del doc["images"][4]["series_id"]
    grouped = tmp_path / "grouped.json"
    grouped.write_text(json.dumps(doc))
    with pytest.raises(SimulationError, match=r"group key 'series_id' \(found on the other images\): 1 of 12 images "
                                              r"have none.*--group-key none"):
        load_simulation_data(grouped, tmp_path / "images", _settings())
    with pytest.raises(SimulationError, match=r"group key 'patient_id': 12 of 12 images have none"):
        load_simulation_data(grouped, tmp_path / "images", _settings(group_key="patient_id"))
    data, split = load_simulation_data(grouped, tmp_path / "images", _settings(group_key=None))
    assert split.group_key is None and len(set(split.groups.values())) == 12
    # every image with its series: whole series stay together
    doc["images"][4]["series_id"] = "s1"
    grouped.write_text(json.dumps(doc))
    _, split = load_simulation_data(grouped, tmp_path / "images", _settings())
    assert split.group_key == "series_id"
    series_of = {im["id"]: im["series_id"] for im in doc["images"]}
    parts = [{series_of[i] for i in part} for part in (split.pool, split.test)]
    assert not parts[0] & parts[1]
