"""Region shapes: brush RLE round trip, polygon percent points, scores, label config parsing."""

import math

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from pycocotools import mask as mask_utils

from tsp_backend.regions import (
    LabelConfigError,
    RegionInstance,
    meta_text,
    parse_label_config,
    prediction_for_task,
)

BRUSH = """<View><Image name="ct" value="$image"/>
<BrushLabels name="lesion" toName="ct"><Label value="epidural"/><Label value="subdural"/></BrushLabels></View>"""
POLY = """<View><Image name="ct" value="$img"/>
<PolygonLabels name="outline" toName="ct"><Label value="epidural"/></PolygonLabels></View>"""


def _rect_mask(h=10, w=20):
    mask = np.zeros((h, w), dtype=bool)
    mask[2:5, 3:7] = True  # rows 2..4, cols 3..6
    return mask


def test_parse_label_config_finds_tag_and_value_key():
    t = parse_label_config(BRUSH, ["epidural", "subdural", "intraparenchymal"])
    assert (t.tag, t.from_name, t.to_name, t.value_key) == ("BrushLabels", "lesion", "ct", "image")
    assert t.labels == ("epidural", "subdural")
    p = parse_label_config(POLY)
    assert (p.tag, p.from_name, p.value_key) == ("PolygonLabels", "outline", "img")


def test_parse_label_config_errors_name_tag_and_labels():
    choices = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="a"/></Choices></View>'
    with pytest.raises(LabelConfigError, match="no BrushLabels or PolygonLabels.*Choices"):
        parse_label_config(choices)
    with pytest.raises(LabelConfigError, match="does not know: subdural"):
        parse_label_config(BRUSH, ["epidural", "intraparenchymal"])
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config("<View><Image")


def test_brush_region_rle_round_trip_and_scores():
    target = parse_label_config(BRUSH)
    mask = _rect_mask()
    inst = RegionInstance("subdural", c=0.974, b=0.912, m=0.85, s=0.5, mask=mask)
    pred = prediction_for_task([inst], target, 20, 10, model_version="v1")
    (r,) = pred["result"]
    assert r["type"] == "brushlabels" and r["from_name"] == "lesion" and r["to_name"] == "ct"
    assert (r["original_width"], r["original_height"]) == (20, 10)
    assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["subdural"]
    decoded = decode_rle(r["value"]["rle"]).reshape(10, 20, 4)[:, :, 3]
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8) * 255)
    assert r["score"] == 0.5
    assert r["meta"]["text"] == ["c 0.97 · b 0.91 · m 0.85"]
    # a single region: S = s (std 0)
    assert pred["score"] == pytest.approx(0.5) and pred["model_version"] == "v1"


def test_polygon_points_in_percent():
    target = parse_label_config(POLY)
    inst = RegionInstance("epidural", c=0.9, b=0.8, m=0.7, s=0.6, mask=_rect_mask())
    (r,) = prediction_for_task([inst], target, 20, 10, model_version="v")["result"]
    assert r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["epidural"]
    # corners of the 4x3 block at x 3..6, y 2..4 in a 20 x 10 image, as % of width / height
    got = sorted(map(tuple, r["value"]["points"]))
    assert got == sorted([(15.0, 20.0), (15.0, 40.0), (30.0, 40.0), (30.0, 20.0)])


def test_image_score_over_emitted_regions_and_label_filter():
    target = parse_label_config(POLY)  # only "epidural"
    brush = parse_label_config(BRUSH)
    empty = RegionInstance("epidural", 0.9, 0.9, 0.9, s=0.2, mask=np.zeros((10, 20), bool))
    assert prediction_for_task([empty], brush, 20, 10, model_version="v")["result"] == []
    mask = _rect_mask()
    insts = [
        RegionInstance("epidural", 0.9, 0.9, 0.9, s=0.5, mask=mask),
        RegionInstance("epidural", 0.9, 0.9, 0.9, s=0.7, mask=mask),
        RegionInstance("subdural", 0.9, 0.9, 0.9, s=0.1, mask=mask),  # not in the config: left out
        RegionInstance("epidural", 0.9, 0.9, 0.9, s=0.2, mask=np.zeros((10, 20), bool)),  # nothing to draw
    ]
    pred = prediction_for_task(insts, target, 20, 10, model_version="v")
    assert [r["score"] for r in pred["result"]] == [0.5, 0.7]
    # eq. 3 by hand: mean 0.6, population std 0.1
    assert pred["score"] == pytest.approx(math.exp(-0.1) * 0.6)
    assert [r["id"] for r in pred["result"]] == ["tsp0", "tsp1"]


def test_empty_prediction_gets_empty_score():
    pred = prediction_for_task([], parse_label_config(BRUSH), 20, 10, model_version="v", empty_score=0.25)
    assert pred == {"result": [], "score": 0.25, "model_version": "v"}


def test_prediction_from_record_with_coco_rle():
    from tsp_model.records import ImageScore, InstanceScore

    mask = _rect_mask()
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    inst = InstanceScore(label=1, category="epidural", box=[3, 2, 7, 5], c=0.9, b=0.8, m=0.7, s=0.6, mask=rle)
    rec = ImageScore(image_id=1, file_name="a.png", width=20, height=10, S=0.6, instances=[inst], model_version="v")
    pred = prediction_for_task(rec, parse_label_config(BRUSH), model_version="v")
    decoded = decode_rle(pred["result"][0]["value"]["rle"]).reshape(10, 20, 4)[:, :, 3]
    np.testing.assert_array_equal(decoded > 0, mask)
    assert pred["score"] == pytest.approx(0.6)


def test_meta_text_format():
    assert meta_text(0.974, 0.905, 0.8549) == "c 0.97 · b 0.91 · m 0.85"
