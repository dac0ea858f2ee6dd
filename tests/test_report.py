"""Report plots: learning curve and S_i histograms are written as readable PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tsp_model.report import plot_learning_curve, plot_score_histograms


def test_learning_curve_png(tmp_path: Path) -> None:
    cycles = [
        {"cycle": 0, "model_version": "v0", "labeled": 10, "pseudo_images": 0, "map50": None},
        {"cycle": 1, "model_version": "v1", "labeled": 20, "pseudo_images": 15, "map50": 0.31},
        {"cycle": 2, "model_version": "v2", "labeled": 30, "pseudo_images": 22, "map50": 0.45},
    ]
    out = plot_learning_curve(cycles, tmp_path / "r" / "curve.png")
    assert out.stat().st_size > 1000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1000, 400)
        arr = np.asarray(img.convert("RGB"))
    assert arr.std() > 5  # something was drawn, not a blank canvas
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["curve.png"]  # no temp file left


def test_histograms_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = {"cycle 1 (v1)": rng.uniform(0, 1, 50).tolist(), "cycle 2 (v2)": rng.beta(5, 2, 50).tolist(),
              "cycle 3 (empty)": []}
    out = plot_score_histograms(scores, tmp_path / "hist.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[1] > img.size[0] * 0.5


def test_empty_inputs_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no cycles"):
        plot_learning_curve([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="missing 'labeled'"):
        plot_learning_curve([{"cycle": 3}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no score files"):
        plot_score_histograms({}, tmp_path / "x.png")
