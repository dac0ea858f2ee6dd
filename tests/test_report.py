"""Report plots: learning curve and S_i histograms are written as readable PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tsp_model.viz.report import plot_learning_curve, plot_score_histograms


def test_learning_curve_png(tmp_path: Path) -> None:
    cycles = [
        {"cycle": 0, "model_version": "v0", "labeled": 10, "pseudo_images": 0, "map50": None},
        {"cycle": 1, "model_version": "v1", "labeled": 20, "pseudo_images": 15, "map50": 0.31},
        {"cycle": 2, "model_version": "v2", "labeled": 30, "pseudo_images": 22, "map50": 0.45},
    ]
    out = plot_learning_curve(cycles, tmp_path / "r" / "curve.png")
    assert out.stat().st_size > 1000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1000, 420)
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


def _annotations(ax) -> list:
    return [c for c in ax.get_children() if c.__class__.__name__ == "Annotation"]


def test_learning_curve_two_cycles_is_readable() -> None:
    from tsp_cli.commands.review import curve_title
    from tsp_model.viz.report import learning_curve_figure

    cycles = [{"cycle": 1, "labeled": 20, "pseudo_images": 3, "map50": 0.31},
              {"cycle": 2, "labeled": 30, "pseudo_images": 8, "map50": 0.42}]
    fig = learning_curve_figure(cycles, curve_title("TSP demo", cycles))
    curve = fig.axes[0]
    # ticks at the two labeled counts, whole numbers (not 19.00 ... 21.00)
    assert list(curve.get_xticks()) == [20, 30]
    assert [t.get_text() for t in curve.get_xticklabels()] == ["20", "30"]
    assert sorted(a.get_text() for a in _annotations(curve)) == ["cycle 1", "cycle 2"]
    assert fig._suptitle.get_text() == "TSP demo: 2 cycles, 20 -> 30 labeled images"


def test_learning_curve_labels_of_shared_counts_do_not_overprint() -> None:
    from tsp_model.viz.report import learning_curve_figure

    # three cycles on the same 20 labels: 1 and 3 at the same point, 2 just above
    cycles = [{"cycle": 1, "labeled": 20, "map50": 0.30}, {"cycle": 2, "labeled": 20, "map50": 0.33},
              {"cycle": 3, "labeled": 20, "map50": 0.30}]
    fig = learning_curve_figure(cycles)
    curve = fig.axes[0]
    notes = _annotations(curve)
    assert sorted(a.get_text() for a in notes) == ["cycle 2", "cycles 1, 3"]
    renderer = fig.canvas.get_renderer()
    a, b = (n.get_window_extent(renderer) for n in notes)
    assert not a.overlaps(b)
    assert list(curve.get_xticks()) == [20]
    assert fig._suptitle.get_text() == "Active learning: 3 cycles"
