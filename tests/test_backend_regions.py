"""Region shapes: brush RLE round trip, polygon percent points, scores, label config parsing."""

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from pycocotools import mask as mask_utils

from tsp_labelstudio.regions import LabelConfigError, meta_text, parse_label_config, prediction_for_task
from tsp_model.core.records import ImageScore, InstanceScore

BRUSH = """<View><Image name="ct" value="$image"/>
<BrushLabels name="lesion" toName="ct"><Label value="epidural"/><Label value="subdural"/></BrushLabels></View>"""
POLY = """<View><Image name="ct" value="$img"/>
<PolygonLabels name="outline" toName="ct"><Label value="epidural"/></PolygonLabels></View>"""


def _rect_mask(h=10, w=20):
    mask = np.zeros((h, w), dtype=bool)
    mask[2:5, 3:7] = True  # rows 2..4, cols 3..6
    return mask


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _record(instances, S=0.42, w=20, h=10):
    """A score record holding ``(category, c, b, m, s, mask)`` detections."""
    insts = [InstanceScore(label=1, category=cat, box=[0, 0, 1, 1], c=c, b=b, m=m, s=s_, mask=_rle(mask))
             for cat, c, b, m, s_, mask in instances]
    return ImageScore(image_id=1, file_name="a.png", width=w, height=h, S=S, instances=insts, model_version="v")


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
    pred = prediction_for_task(_record([("subdural", 0.974, 0.912, 0.85, 0.5, mask)]), target,
                               model_version="v1", show_threshold=0.5)
    (r,) = pred["result"]
    assert r["type"] == "brushlabels" and r["from_name"] == "lesion" and r["to_name"] == "ct"
    assert (r["original_width"], r["original_height"]) == (20, 10)
    assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["subdural"]
    decoded = decode_rle(r["value"]["rle"]).reshape(10, 20, 4)[:, :, 3]
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8) * 255)
    assert r["score"] == 0.5
    assert r["meta"]["text"] == ["score 0.50 = how sure the model is of this region (1 = sure): "
                                 "class c 0.97 · box b 0.91 · mask m 0.85"]
    assert pred["score"] == 0.42 and pred["model_version"] == "v1"  # the record's S_i, not the region's s
    assert "cluster" not in pred


def test_polygon_points_in_percent():
    target = parse_label_config(POLY)
    rec = _record([("epidural", 0.9, 0.8, 0.7, 0.6, _rect_mask())])
    (r,) = prediction_for_task(rec, target, model_version="v", show_threshold=0.5)["result"]
    assert r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["epidural"]
    # corners of the 4x3 block at x 3..6, y 2..4 in a 20 x 10 image, as % of width / height
    got = sorted(map(tuple, r["value"]["points"]))
    assert got == sorted([(15.0, 20.0), (15.0, 40.0), (30.0, 40.0), (30.0, 20.0)])


def test_only_the_shown_set_becomes_regions_and_the_score_is_the_records_S():
    target = parse_label_config(POLY)  # only "epidural"
    mask = _rect_mask()
    rec = _record([
        ("epidural", 0.90, 0.9, 0.9, 0.5, mask),
        ("epidural", 0.60, 0.9, 0.9, 0.7, mask),
        ("epidural", 0.59, 0.9, 0.9, 0.1, mask),  # below the display threshold: score file only
        ("subdural", 0.95, 0.9, 0.9, 0.1, mask),  # not in the config: left out
        ("epidural", 0.95, 0.9, 0.9, 0.2, np.zeros((10, 20), bool)),  # nothing to draw
    ], S=0.123)
    pred = prediction_for_task(rec, target, model_version="v", show_threshold=0.6)
    assert [r["score"] for r in pred["result"]] == [0.5, 0.7]
    assert [r["id"] for r in pred["result"]] == ["tsp0", "tsp1"]
    # whatever is shown, the prediction's score is exactly the score file's S_i
    assert pred["score"] == 0.123
    nothing = prediction_for_task(rec, target, model_version="v", show_threshold=0.99)
    assert nothing == {"result": [], "score": 0.123, "model_version": "v"}


def test_other_strategies_pass_their_queue_value_and_a_cluster():
    rec = _record([("epidural", 0.9, 0.9, 0.9, 0.5, _rect_mask())], S=0.3)
    pred = prediction_for_task(rec, parse_label_config(BRUSH), model_version="v+x", show_threshold=0.5,
                               score=0.05, cluster=3)
    assert pred["score"] == 0.05 and pred["cluster"] == 3


def test_a_non_finite_score_is_refused():
    rec = _record([], S=float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        prediction_for_task(rec, parse_label_config(BRUSH), model_version="v", show_threshold=0.5)


def test_meta_text_format():
    assert meta_text(0.974, 0.905, 0.8549, 0.6249) == ("score 0.62 = how sure the model is of this region (1 = sure): "
                                                      "class c 0.97 · box b 0.91 · mask m 0.85")
