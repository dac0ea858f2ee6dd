"""The quickstart's own code path (`tsp-sync demo`), smaller, against the real Label Studio."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tsp_cli.demo import DemoOptions, format_queue, label_config, run_demo
from tsp_cli.local_server import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_run(label_studio):
    lines: list[str] = []
    opts = DemoOptions(
        root=Path(label_studio.files_root) / "quickstart",
        count=16, size=96, first_batch=6, epochs=1, serve=False, progress=False,
        backend_port=free_port(),
    )
    result = run_demo(opts, echo=lines.append, label_studio=label_studio)
    return opts, result, lines


def test_printed_queue_matches_next(demo_run, label_studio, ls_client):
    opts, result, lines = demo_run
    text = "\n".join(lines)
    rows = re.findall(r"^\s+1\. task\s+(\d+)\s+S_i = ([0-9.]+)", text, flags=re.M)
    assert rows, text
    first_printed = int(rows[0][0])
    # What an annotator is served: Label Studio's own /next (the task is locked for this user).
    from tsp_cli.client import get_json

    nxt = get_json(ls_client, f"api/projects/{result['project_id']}/next", "asking for the next task")
    assert nxt["id"] == first_printed == result["next_task"]
    assert f"-> task {first_printed} (the lowest S_i)" in text
    # the queue is sorted by S_i and has one row per unlabeled task, up to ten
    scores = [e["S"] for e in result["queue"]]
    assert scores == sorted(scores)
    assert len(result["queue"]) == min(10, opts.count - opts.first_batch)


def test_prints_login_plots_and_writes_settings(demo_run):
    opts, result, lines = demo_run
    text = "\n".join(lines)
    assert re.search(r"Label Studio\s+http://127\.0\.0\.1:\d+/projects/\d+/data\s+login \S+ / \S+", text)
    assert Path(result["overlays"]).is_file()
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in result["plots"])
    settings = (opts.root / "tsp.toml").read_text()
    assert f"label_studio_project = {result['project_id']}" in settings
    assert "[projects.demo.model]" in settings


def test_second_run_reuses_what_exists(demo_run, label_studio, ls_client):
    opts, first, _ = demo_run
    lines: list[str] = []
    opts2 = DemoOptions(**{**opts.__dict__, "backend_port": free_port()})
    second = run_demo(opts2, echo=lines.append, label_studio=label_studio)
    text = "\n".join(lines)
    assert second["project_id"] == first["project_id"]
    assert "reusing" in text and "0 tasks imported, 16 already there" in text
    assert "already has annotations: kept" in text
    tasks = list(ls_client.tasks.list(project=first["project_id"]))
    assert len(tasks) == opts.count


def test_label_config_and_queue_formatting():
    cfg = label_config(["epidural", "subdural"])
    assert '<BrushLabels name="lesion" toName="image">' in cfg and 'value="subdural"' in cfg
    out = format_queue([{"task": 7, "S": 0.25}, {"task": 3, "S": 0.5}], {7: "a.png"})
    assert out.splitlines()[0].split() == ["1.", "task", "7", "S_i", "=", "0.2500", "a.png"]
