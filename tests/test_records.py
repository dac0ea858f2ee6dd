"""ImageScore / InstanceScore JSON round trip and the atomic JSONL writer."""

import json
import os

import numpy as np
import pytest

from tsp_model.core.records import ImageScore, InstanceScore, RecordError, read_jsonl, write_jsonl


def _inst(s=0.4696466863948485, mask=None):
    return InstanceScore(
        label=2,
        category="subdural",
        box=[1.5, 2.25, 30.0, 41.125],
        c=0.9,
        b=0.6,
        m=0.3,
        s=s,
        entropy=0.123456789012345,
        mask=mask,
    )


def _pool():
    rle = {"size": [64, 48], "counts": "PPYo1"}
    return [
        ImageScore(7, "a.png", 48, 64, S=0.46964668639484847, instances=[_inst(mask=rle)],
                   model_version="v1", extras={"emb": [0.1, 0.2]}),
        ImageScore("task-3", "b.png", 48, 64, S=1.0, instances=[], model_version="v1"),
        ImageScore(9, "c.png", 48, 64, S=0.5, instances=[_inst(), _inst(s=0.1)]),
    ]


def test_round_trip_keeps_full_precision(tmp_path):
    pool = _pool()
    path = write_jsonl(tmp_path / "scores" / "v1.jsonl", pool)  # parent dir created
    assert path.exists()
    back = read_jsonl(path)
    assert back == pool  # dataclass equality: every field, floats bit-exact
    assert back[0].S == 0.46964668639484847
    assert back[0].instances[0].mask == {"size": [64, 48], "counts": "PPYo1"}
    assert back[1].image_id == "task-3" and back[1].instances == []
    assert len(path.read_text().splitlines()) == 3


def test_to_json_is_plain_json_types():
    inst = InstanceScore(
        label=np.int64(1), category="epidural", box=list(np.array([0, 1, 2, 3], dtype=np.float32)),
        c=np.float32(0.5), b=np.float64(0.5), m=0.5, s=0.5, entropy=np.float32(0.0),
        mask={"size": np.array([4, 4]), "counts": b"abc"},  # pycocotools gives bytes counts
    )
    img = ImageScore(np.int64(3), "x.png", np.int64(4), 4, np.float32(0.5), [inst])
    d = img.to_json()
    text = json.dumps(d)  # would raise on numpy scalars or bytes
    assert json.loads(text)["instances"][0]["mask"] == {"size": [4, 4], "counts": "abc"}
    assert type(d["image_id"]) is int and type(d["instances"][0]["label"]) is int
    assert ImageScore.from_json(json.loads(text)).instances[0].box == [0.0, 1.0, 2.0, 3.0]


def test_write_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "scores.jsonl"
    write_jsonl(path, _pool())
    before = path.read_bytes()

    class Boom(ImageScore):
        def to_json(self):
            raise RuntimeError("disk on fire")

    bad = Boom(1, "z.png", 4, 4, 0.5)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_jsonl(path, [*_pool(), bad])  # fails after two lines were written
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["scores.jsonl"]


def test_nan_score_is_refused_with_image_id(tmp_path):
    path = tmp_path / "s.jsonl"
    with pytest.raises(RecordError, match="'nan-image'.*NaN"):
        write_jsonl(path, [ImageScore("nan-image", "n.png", 4, 4, float("nan"))])
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "s.jsonl"
    good = json.dumps(_pool()[1].to_json())
    path.write_text(good + "\n\n" + '{"image_id": 1, "file_name": \n')
    with pytest.raises(RecordError, match=r"s\.jsonl:3: not valid JSON"):
        read_jsonl(path)


def test_invalid_record_names_file_line_and_key(tmp_path):
    path = tmp_path / "s.jsonl"
    d = _pool()[0].to_json()
    del d["S"]
    path.write_text(json.dumps(_pool()[1].to_json()) + "\n" + json.dumps(d) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:2: .*missing key\(s\) S"):
        read_jsonl(path)

    d = _pool()[0].to_json()
    d["instances"][0]["box"] = [1, 2, 3]
    path.write_text(json.dumps(d) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl:1: image 7: instance: 'box'"):
        read_jsonl(path)

    d = _pool()[0].to_json()
    d["scroe"] = 1
    with pytest.raises(RecordError, match="unknown key.*scroe"):
        ImageScore.from_json(d)


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "nope.jsonl")


def test_rescore_recomputes_S_from_the_stored_detections_without_inference():
    from tsp_model.core.config import ActiveConfig
    from tsp_model.core.records import rescore

    inst = lambda c, s: InstanceScore(label=1, category="a", box=[0, 0, 1, 1], c=c, b=c, m=c, s=s)  # noqa: E731
    recs = [ImageScore(1, "a.png", 4, 4, S=0.0, instances=[inst(0.9, 0.9), inst(0.3, 0.3)]),
            ImageScore(2, "b.png", 4, 4, S=1.0, instances=[])]
    out, changed = rescore(recs, ActiveConfig(score_threshold=0.5))
    # image 1: only the c = 0.9 instance is scored -> S = its s (c = b = m = 0.9 -> s = 0.9)
    assert out[0].S == pytest.approx(0.9) and out[1].S == 1.0 and changed == 1
    out, changed = rescore(out, ActiveConfig(score_threshold=0.95, empty_image_rule="max_c"))  # nothing scored: 1 - 0.9
    assert out[0].S == pytest.approx(0.1) and changed == 1
    out, changed = rescore(out, ActiveConfig(score_threshold=0.95))  # the default rule: the constant 1.0
    assert out[0].S == 1.0 and changed == 1
    assert recs[0].S == 0.0  # the input records are not modified
