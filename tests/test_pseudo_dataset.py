"""PseudoLabelDataset keeps exactly the instances above all three thresholds (section 3.2)."""

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from tsp_model.data.pseudo import PseudoLabelDataset
from tsp_model.core.records import ImageScore, InstanceScore

H, W = 12, 10
CLASSES = ["epidural", "subdural", "intraparenchymal"]


def _rle(rows: slice, cols: slice) -> dict:
    m = np.zeros((H, W), dtype=np.uint8)
    m[rows, cols] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def _inst(cat, c, b, m, box=(1, 1, 5, 5), mask=None):
    return InstanceScore(label=CLASSES.index(cat) + 1, category=cat, box=list(box), c=c, b=b, m=m, s=0.5,
                         mask=mask if mask is not None else _rle(slice(1, 5), slice(1, 5)))


@pytest.fixture
def pool(tmp_path):
    paths = {}
    for i in (1, 2, 3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((H, W), 10 * i, dtype=np.uint8)).save(p)
        paths[i] = p
    records = [
        ImageScore(image_id=1, file_name="1.png", width=W, height=H, S=0.8, instances=[
            _inst("subdural", 0.95, 0.95, 0.85, box=(2, 3, 6, 9), mask=_rle(slice(3, 9), slice(2, 6))),  # kept
            _inst("epidural", 0.95, 0.95, 0.75),  # m too low
            _inst("epidural", 0.85, 0.99, 0.99),  # c too low
            _inst("epidural", 0.99, 0.85, 0.99),  # b too low
            _inst("intraparenchymal", 0.91, 0.91, 0.81, box=(0, 0, 2, 2), mask=_rle(slice(0, 2), slice(0, 2))),  # kept
        ]),
        # Every instance fails a threshold (c == sigma_c is not "larger than"): image dropped.
        ImageScore(image_id=2, file_name="2.png", width=W, height=H, S=0.3, instances=[
            _inst("epidural", 0.9, 0.95, 0.95), _inst("subdural", 0.2, 0.2, 0.2)]),
        ImageScore(image_id=3, file_name="3.png", width=W, height=H, S=1.0, instances=[]),
    ]
    return records, paths


def test_only_instances_above_all_thresholds_survive(pool):
    records, paths = pool
    ds = PseudoLabelDataset(records, paths, CLASSES, train=False)
    assert ds.image_ids == [1]
    assert ds.num_instances == 2 and len(ds) == 1
    image, target = ds[0]
    assert image.shape == (3, H, W)
    assert torch.allclose(image, torch.full((3, H, W), 10 / 255))
    assert target["pseudo"] is True and target["image_id"] == 1
    assert target["labels"].tolist() == [2, 3]
    assert target["boxes"].tolist() == [[2, 3, 6, 9], [0, 0, 2, 2]]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, H, W)
    assert masks[0, 3:9, 2:6].all() and masks[0].sum() == 24
    assert masks[1, 0:2, 0:2].all() and masks[1].sum() == 4


def test_thresholds_are_parameters(pool):
    records, paths = pool
    ds = PseudoLabelDataset(records, paths, CLASSES, sigma_c=0.5, sigma_b=0.5, sigma_m=0.5, train=False)
    assert ds.image_ids == [1, 2]
    assert ds.num_instances == 6  # all of image 1, first of image 2


def test_flip_applies_to_pseudo_targets(pool):
    records, paths = pool
    ds = PseudoLabelDataset(records, paths, CLASSES, train=True, hflip_prob=1.0)
    _, target = ds[0]
    assert target["boxes"][0].tolist() == [W - 6, 3, W - 2, 9]
    assert target["masks"][1, 0:2, W - 2:].all()


def test_bad_inputs_are_named(pool, tmp_path):
    records, paths = pool
    with pytest.raises(ValueError, match="subdural"):
        PseudoLabelDataset(records, paths, ["epidural", "intraparenchymal"])
    with pytest.raises(ValueError, match="image_paths"):
        PseudoLabelDataset(records, {2: paths[2]}, CLASSES)
    (tmp_path / "1.png").write_bytes(b"broken")
    assert len(PseudoLabelDataset(records, paths, CLASSES)) == 0
