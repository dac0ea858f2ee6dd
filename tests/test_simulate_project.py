"""`tsp-sync simulate --project`: a team's own Label Studio project replayed, its finished tasks as
the oracle, against a real Label Studio (no export step)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli_integration import TSP_TOML, brush_results, configured_project, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = ["--arms", "random,tsp", "--seeds", "0", "--budget", "2", "--cycles", "2", "--image-size", "64",
        "--image-steps", "4", "--min-epochs", "1", "--no-tune", "--validation", "0", "--test-fraction", "0.25",
        "--threads", "1"]


def test_a_projects_finished_tasks_are_the_oracle(label_studio, ls_client, tmp_path):
    info = configured_project(label_studio, ls_client, tmp_path, TSP_TOML, title="ICH replay")
    # annotators finished every task but the skipped one
    for phantom_id, tid in info["by_phantom"].items():
        if tid not in info["labeled"] and tid != info["skipped"]:
            ls_client.annotations.create(tid, result=brush_results(info["coco"], phantom_id))
    finished = sorted(set(info["by_phantom"].values()) - {info["skipped"]})

    res = run(info, "simulate", "--project", "ich", *TINY)
    assert res.exit_code == 0, res.output
    assert f"{len(finished)} finished tasks to replay" in res.output
    out = info["work"] / "work" / "simulation"
    doc = json.loads((out / "simulation.json").read_text())
    images = doc["data"]["split"]["images"]
    assert images["pool"] + images["test"] == len(finished) and images["test"] > 0
    # the oracle is the project's own labels: what random's cycles labeled are finished tasks
    labeled = {i for r in doc["runs"] if r["arm"] == "random" for i in r["selected"]}
    assert labeled and labeled <= set(finished)
    truth = {tid: len(brush_results(info["coco"], pid)) for pid, tid in info["by_phantom"].items()}
    cycle2 = next(r for r in doc["runs"] if r["arm"] == "random" and r["cycle"] == 2)
    selected_total = {i for r in doc["runs"] if r["arm"] == "random" and r["cycle"] <= 2 for i in r["selected"]}
    assert cycle2["labeled_instances"] == sum(truth[i] for i in selected_total)
    assert doc["oracle_ok"] and not doc["errors"]

    # offline: the pulled snapshot replays without Label Studio (an unreachable URL), and the finished
    # models are reused
    env = {**info["env"], "LABEL_STUDIO_URL": "http://127.0.0.1:9"}
    again = run(info, "simulate", "--project", "ich", "--offline", *TINY, env=env)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "simulation.json").read_text())["runs"] == doc["runs"]
    # neither or both sources: one line
    both = run(info, "simulate", "--project", "ich", "--coco", str(out / "simulation.json"), *TINY)
    assert both.exit_code == 1 and "give --coco FILE" in both.output
