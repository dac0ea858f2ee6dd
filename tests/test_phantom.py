"""Phantom generator: deterministic, COCO-valid, lesions disjoint, inside the head, bright."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.synth.phantom import CLASS_NAMES, main, render_slice, window


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    from tsp_model.synth.phantom import generate_phantoms

    a = generate_phantoms(tmp_path / "a", 4, size=64, seed=3, progress=False)
    b = generate_phantoms(tmp_path / "b", 4, size=64, seed=3, progress=False)
    c = generate_phantoms(tmp_path / "c", 4, size=64, seed=4, progress=False)
    fa, fb, fc = _files(a.parent), _files(b.parent), _files(c.parent)
    assert a.name == "annotations.json" and len(fa) == 5
    assert fa == fb
    assert fa["images/phantom_00000.png"] != fc["images/phantom_00000.png"]


def test_lesion_rate_and_masks(tmp_path):
    from tsp_model.synth.phantom import generate_phantoms

    ann = generate_phantoms(tmp_path, 50, size=64, seed=0, lesion_rate=0.7, progress=False)
    coco = COCO(str(ann))
    assert len(coco.imgs) == 50
    positive = {a["image_id"] for a in coco.anns.values()}
    assert len(positive) == 35  # exactly round(0.7 * 50)
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == CLASS_NAMES
    assert {a["category_id"] for a in coco.anns.values()} == {1, 2, 3}
    for img_id in positive:
        anns = coco.imgToAnns[img_id]
        assert 1 <= len(anns) <= 3
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
        assert masks.shape[1:] == (64, 64)
        assert (masks.sum(axis=(1, 2)) >= 12).all()  # min area at size 64
        assert masks.sum(0).max() == 1  # instances disjoint
        image = np.array(Image.open(tmp_path / coco.imgs[img_id]["file_name"]))
        assert image.dtype == np.uint8 and image.shape == (64, 64)
        for a, m in zip(anns, masks):
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            assert (image[m] > 0).all()  # inside the head, not in air


def test_lesions_are_brighter_than_brain_and_darker_than_bone():
    rng = np.random.default_rng(5)
    sl = render_slice(rng, 128, 3)
    assert len(sl.lesions) >= 1
    lesion = np.any([m for _, m in sl.lesions], axis=0)
    assert sl.hu[lesion].mean() > 50  # acute blood
    brain = (sl.hu > 15) & (sl.hu < 50) & ~lesion
    assert 25 < np.median(sl.hu[brain]) < 45
    # Bone exists; blood is not bone (edge pixels next to the skull mix with it: partial volume).
    assert (sl.hu > 500).sum() > 0 and np.percentile(sl.hu[lesion], 75) < 100
    assert np.array_equal(sl.image, window(sl.hu))
    empty = render_slice(np.random.default_rng(5), 128, 0)
    assert empty.lesions == []


def test_dataset_reads_phantoms_back(tmp_path):
    from tsp_model.synth.phantom import generate_phantoms

    ann = generate_phantoms(tmp_path, 6, size=64, seed=1, lesion_rate=0.5, progress=False)
    ds = CocoInstanceDataset(ann)  # file_name is relative to the json's folder
    assert ds.class_names == CLASS_NAMES and len(ds) == 6
    doc = json.loads(ann.read_text())
    n_empty = 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 64)
        anns = [a for a in doc["annotations"] if a["image_id"] == target["image_id"]]
        n_empty += not anns
        expected = [mask_utils.decode(a["segmentation"]) for a in anns]
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert np.array_equal(target["masks"].numpy(), np.array(expected, dtype=np.uint8).reshape(-1, 64, 64))
    assert n_empty == 3


def test_cli_and_argument_checks(tmp_path):
    result = CliRunner().invoke(main, [str(tmp_path / "o"), "--count", "2", "--size", "64", "--seed", "2",
                                       "--lesion-rate", "1.0"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("annotations.json")
    assert len(json.loads((tmp_path / "o" / "annotations.json").read_text())["images"]) == 2
    bad = CliRunner().invoke(main, [str(tmp_path / "p"), "--lesion-rate", "2"])
    assert bad.exit_code != 0 and "lesion-rate" in bad.output
    from tsp_model.synth.phantom import generate_phantoms

    with pytest.raises(ValueError, match="size"):
        generate_phantoms(tmp_path / "q", 1, size=16)


def test_series_are_consecutive_slices_of_one_head_with_growing_and_shrinking_lesions(tmp_path):
    from tsp_model.synth.phantom import generate_series

    a = generate_series(tmp_path / "a", 4, slices=8, size=64, seed=5, progress=False)
    b = generate_series(tmp_path / "b", 4, slices=8, size=64, seed=5, progress=False)
    assert _files(a.parent) == _files(b.parent)  # deterministic
    coco = COCO(str(a))
    images = sorted(coco.dataset["images"], key=lambda im: im["id"])
    assert [(im["series_id"], im["slice_index"], im["instance_number"]) for im in images[:3]] == [
        ("series_00000", 0, 1), ("series_00000", 1, 2), ("series_00000", 2, 3)]
    assert len({im["series_id"] for im in images}) == 4
    def thumb(im):  # 8 x 8 block means: anatomy, not the per-slice acquisition noise
        x = np.array(Image.open(a.parent / im["file_name"]), dtype=np.float64)
        return x.reshape(8, 8, 8, 8).mean(axis=(1, 3))

    thumbs = [thumb(im) for im in images]
    # neighbours within a series look alike; the same slice level of another head does not
    same = np.mean([np.abs(thumbs[i] - thumbs[i + 1]).mean() for i in range(2, 6)])
    other = np.mean([np.abs(thumbs[i] - thumbs[i + 8]).mean() for i in range(2, 6)])
    assert same < 0.75 * other  # measured: about 7 vs 12.6 gray levels at 64 px


def test_a_series_lesion_grows_and_shrinks_from_slice_to_slice():
    from tsp_model.synth.phantom import render_series

    for seed in range(4):
        areas = [sum(int(m.sum()) for _, m in sl.lesions) for sl in render_series([seed, 7], 64, 12, n_lesions=1)]
        shown = [a_ for a_ in areas if a_ > 0]
        assert len(shown) >= 2, areas  # one bleed seen on several neighbouring slices
        first, last = areas.index(shown[0]), len(areas) - 1 - areas[::-1].index(shown[-1])
        assert all(v > 0 for v in areas[first:last + 1]), areas  # contiguous
        peak = int(np.argmax(shown))
        assert all(x <= y for x, y in zip(shown[:peak], shown[1:peak + 1])), areas  # grows...
        assert all(x >= y for x, y in zip(shown[peak:], shown[peak + 1:])), areas  # ...then shrinks


def test_series_test_sets_never_share_a_head_with_the_pool(tmp_path):
    from tsp_model.synth.phantom import generate_series

    pool = generate_series(tmp_path / "p", 3, slices=2, size=48, seed=0, progress=False)
    test = generate_series(tmp_path / "t", 2, slices=2, size=48, seed=0, first_series=100, progress=False)
    ids = lambda p: {im["series_id"] for im in json.loads(p.read_text())["images"]}  # noqa: E731
    assert ids(pool) == {"series_00000", "series_00001", "series_00002"} and ids(test) == {"series_00100", "series_00101"}
