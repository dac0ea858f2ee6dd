"""benchmarks/speed.py runs end to end at a tiny size and writes the JSON it documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402


def test_tiny_speed_run_writes_its_json(tmp_path):
    out = tmp_path / "speed.json"
    speed.main(["--smoke", "--size", "64", "--pool", "4", "--steps", "1", "--workers", "0",
                "--sections", "train,score,backend", "--backend-requests", "3", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["backbone"] == "tiny_fpn" and data["image_size"] == 64
    train = data["train"]
    for arm in ("tsp", "plain"):
        assert train[arm]["images_per_s"] > 0 and train[arm]["step_s_median"] > 0
    assert abs(train["ratio_tsp_over_plain"] - train["tsp"]["images_per_s"] / train["plain"]["images_per_s"]) < 1e-9
    score = data["score"]
    assert score["images"] == 4 and score["tsp_images_per_s"] > 0 and score["plain_images_per_s"] > 0
    backend = data["backend"]
    assert backend["requests"] == 3 and 0 < backend["p50_s"] <= backend["p95_s"]
    assert backend["concurrent_requests_per_s"] > 0
