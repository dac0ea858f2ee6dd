"""CocoInstanceDataset: label mapping, polygon/RLE masks, skipping rules, flips, subsets, bad files."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from tsp_model.data.coco import CocoInstanceDataset, collate_fn
from tsp_model.data.coco_file import write_coco

H, W = 16, 20


def _rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


@pytest.fixture
def coco_dir(tmp_path):
    """Images 1 (4 usable instances), 2 (no annotation), 3 (missing file), 4 (corrupt file)."""
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    pixels = np.zeros((H, W), dtype=np.uint8)
    pixels[0, 0] = 255  # marks the top-left corner, to see flips
    Image.fromarray(pixels).save(img_dir / "a.png")
    Image.fromarray(np.full((H, W), 51, dtype=np.uint8)).save(img_dir / "b.png")
    (img_dir / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    rle_mask = np.zeros((H, W), dtype=np.uint8)
    rle_mask[10:13, 1:5] = 1
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {"id": 2, "file_name": "b.png", "width": W, "height": H},
        {"id": 3, "file_name": "c.png", "width": W, "height": H},
        {"id": 4, "file_name": "d.png", "width": W, "height": H},
    ]
    anns = [
        # polygon square -> pixels rows/cols 2..5, category 7 (-> label 2)
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 2, 4, 4], "area": 16, "iscrowd": 0,
         "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        # compressed RLE (counts as str), category 3 (-> label 1)
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [1, 10, 4, 3], "area": 12, "iscrowd": 0,
         "segmentation": _rle_str(rle_mask)},
        # uncompressed RLE, column-major: 0 zeros, 3 ones (rows 0..2 of column 0), rest zeros
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 3], "area": 3, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": [0, 3, H * W - 3]}},
        # crowd region: skipped
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": [0, 5, H * W - 5]}},
        # degenerate box (w < 1): dropped with its mask
        {"id": 14, "image_id": 1, "category_id": 7, "bbox": [8, 8, 0.5, 4], "area": 2, "iscrowd": 0,
         "segmentation": [[8, 8, 8.5, 8, 8.5, 12, 8, 12]]},
        {"id": 15, "image_id": 3, "category_id": 7, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0,
         "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
    ]
    cats = [{"id": 7, "name": "subdural"}, {"id": 3, "name": "epidural"}]
    ann_file = write_coco(tmp_path / "ann.json", images, anns, cats)
    return ann_file, img_dir


def test_labels_masks_boxes_and_skips(coco_dir, caplog):
    ann_file, img_dir = coco_dir
    with caplog.at_level(logging.WARNING):
        ds = CocoInstanceDataset(ann_file, img_dir)
    # Missing and corrupt images are dropped and named.
    assert ds.ids == [1, 2]
    assert "c.png" in caplog.text and "d.png" in caplog.text
    # Categories ordered by id: 3 -> 1, 7 -> 2.
    assert ds.class_names == ["epidural", "subdural"]

    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert target["image_id"] == 1 and target["pseudo"] is False
    assert target["labels"].tolist() == [2, 1, 1]
    assert target["boxes"].tolist() == [[2, 2, 6, 6], [1, 10, 5, 13], [0, 0, 1, 3]]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (3, H, W)
    expected = np.zeros((3, H, W), dtype=np.uint8)
    expected[0, 2:6, 2:6] = 1
    expected[1, 10:13, 1:5] = 1
    expected[2, 0:3, 0] = 1
    assert np.array_equal(masks.numpy(), expected)


def test_empty_image_is_kept_with_empty_target(coco_dir):
    ds = CocoInstanceDataset(*coco_dir)
    image, target = ds[1]
    assert target["image_id"] == 2
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, H, W) and target["masks"].dtype == torch.uint8
    assert torch.allclose(image, torch.full((3, H, W), 0.2))


def test_image_dir_defaults_to_json_folder(tmp_path):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "x.png")
    ann = write_coco(tmp_path / "a.json", [{"id": 5, "file_name": "x.png", "width": 8, "height": 8}], [],
                     [{"id": 1, "name": "epidural"}])
    ds = CocoInstanceDataset(ann)
    assert ds.ids == [5] and ds.image_path(0) == tmp_path / "x.png"
    assert ds.image_info(0)["width"] == 8


def test_train_flip_mirrors_image_boxes_and_masks(coco_dir):
    ds = CocoInstanceDataset(*coco_dir, train=True, hflip_prob=1.0)
    image, target = ds[0]
    assert image[0, 0, W - 1] == 1.0 and image[0, 0, 0] == 0.0
    # x1' = W - x2, x2' = W - x1 with W = 20
    assert target["boxes"].tolist() == [[14, 2, 18, 6], [15, 10, 19, 13], [19, 0, 20, 3]]
    assert target["masks"][2, 0:3, W - 1].tolist() == [1, 1, 1]
    assert target["masks"][2].sum() == 3
    ds0 = CocoInstanceDataset(*coco_dir, train=True, hflip_prob=0.0)
    assert ds0[0][1]["boxes"][0].tolist() == [2, 2, 6, 6]


def test_forced_class_names(coco_dir):
    ds = CocoInstanceDataset(*coco_dir, class_names=["subdural", "intraparenchymal", "epidural"])
    assert ds[0][1]["labels"].tolist() == [1, 3, 3]
    with pytest.raises(ValueError, match="subdural"):
        CocoInstanceDataset(*coco_dir, class_names=["epidural"])


def test_subset_hides_other_images(coco_dir):
    ds = CocoInstanceDataset(*coco_dir)
    sub = ds.subset([2])
    assert sub.ids == [2] and len(sub) == 1
    assert sub.class_names == ds.class_names
    assert sub.coco.anns == {}  # image 1's annotations are not reachable
    assert set(sub.coco.imgs) == {2}
    sub1 = ds.subset([1])
    assert {a["image_id"] for a in sub1.coco.anns.values()} == {1}
    with pytest.raises(KeyError, match="99"):
        ds.subset([1, 99])


def test_collate_and_dataloader(coco_dir):
    ds = CocoInstanceDataset(*coco_dir)
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_fn)))
    assert isinstance(images, list) and isinstance(targets, list)
    assert [t["image_id"] for t in targets] == [1, 2]


def test_unreadable_at_getitem_falls_back_to_next(coco_dir, caplog):
    ann_file, img_dir = coco_dir
    ds = CocoInstanceDataset(ann_file, img_dir)
    (img_dir / "a.png").write_bytes(b"gone bad")
    with caplog.at_level(logging.WARNING):
        _, target = ds[0]
    assert target["image_id"] == 2
    assert "a.png" in caplog.text


def test_no_readable_image_is_an_error(tmp_path):
    ann = write_coco(tmp_path / "a.json", [{"id": 1, "file_name": "x.png", "width": 8, "height": 8}], [],
                     [{"id": 1, "name": "epidural"}])
    with pytest.raises(ValueError, match="none of its 1 images"):
        CocoInstanceDataset(ann, tmp_path)


def test_write_coco_is_atomic_and_decodes_bytes(tmp_path):
    rle = mask_utils.encode(np.asfortranarray(np.ones((4, 4), dtype=np.uint8)))
    path = write_coco(tmp_path / "sub" / "c.json", [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}],
                      [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "bbox": [0, 0, 4, 4],
                        "area": 16, "iscrowd": 0}], [{"id": 1, "name": "epidural"}])
    doc = json.loads(path.read_text())
    assert isinstance(doc["annotations"][0]["segmentation"]["counts"], str)
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temp file left behind
