"""tsp-sync overlay / report on a work directory (no Label Studio needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from tests.test_overlay import record
from tsp_cli.commands.review import overlay_command, read_cycles, record_cycle, report_command
from tsp_model.core.records import write_jsonl


def make_workdir(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    recs = [record(i, S=s) for i, s in enumerate([0.2, 0.8, 0.5])]
    for r in recs:
        Image.fromarray(np.full((64, 64), 60, np.uint8)).save(root / "images" / r.file_name)
    write_jsonl(root / "scores" / "v1.s1.jsonl", recs)
    return root


def test_overlay_command_writes_index(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path / "wd")
    res = CliRunner().invoke(overlay_command, ["--workdir", str(wd), "--top", "1"])
    assert res.exit_code == 0, res.output
    out = wd / "overlays" / "v1"
    assert sorted(p.name for p in out.glob("*.png")) == ["easiest_001_img_1.png", "hardest_001_img_0.png"]
    assert "hardest_001_img_0.png" in (out / "index.html").read_text()


def test_overlay_without_scores_is_one_line_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(overlay_command, ["--workdir", str(tmp_path)])
    assert res.exit_code == 1
    assert "no score file yet; run tsp-sync score first" in res.output


def test_record_cycle_and_report(tmp_path: Path) -> None:
    wd = make_workdir(tmp_path / "wd")
    record_cycle(wd, {"model_version": "v1", "labeled": 10, "pseudo_images": 3, "pseudo_instances": 4,
                      "metrics": {"segm_ap50": 0.25}, "finished_at": "2026-11-25T15:00:00+00:00"})
    record_cycle(wd, {"model_version": "v2", "labeled": 20, "metrics": {}})
    rows = read_cycles(wd)
    assert [(r["cycle"], r["labeled"], r["map50"]) for r in rows] == [(1, 10, 0.25), (2, 20, None)]
    assert json.loads((wd / "cycles.jsonl").read_text().splitlines()[0])["pseudo_instances"] == 4
    res = CliRunner().invoke(report_command, ["--workdir", str(wd)])
    assert res.exit_code == 0, res.output
    for name in ("learning_curve.png", "score_histograms.png"):
        with Image.open(wd / "report" / name) as img:
            assert img.format == "PNG"
