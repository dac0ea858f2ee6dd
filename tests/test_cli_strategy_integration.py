"""`tsp-sync` honors ``active.strategy`` against a real Label Studio 1.23.

The project of tests/test_cli_integration.py (12 phantoms, 5 annotated, 1 skipped), configured
with ``active.strategy = "class_entropy"``: one `tsp-sync cycle` with a tiny model must push
predictions whose scores follow the mean class entropy of the score file, and `/next` must serve
the task with the highest mean entropy. Switching back to ``tsp`` replaces every prediction.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_cli_integration import TSP_TOML, configured_project, current_predictions, next_task
from tests.test_cli_integration import run as run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STRATEGY_TOML = TSP_TOML + """strategy = "class_entropy"
cluster_source = "none"  # the strategy's order alone (clusters are tested in test_cli_integration)
"""


@pytest.fixture(scope="module")
def entropy_project(label_studio, ls_client, tmp_path_factory):
    return configured_project(label_studio, ls_client, tmp_path_factory.mktemp("tsp-sync-strategy"),
                              STRATEGY_TOML, title="ICH class entropy")


def test_class_entropy_orders_the_queue(entropy_project, label_studio, ls_client):
    from tsp_model.core.records import read_jsonl

    info = entropy_project
    result = run_cli(info, "cycle", "--project", "ich")
    assert result.exit_code == 0, result.output
    state = json.loads((info["work"] / "work" / "state.json").read_text())
    scored = state["last_score"]
    base = scored["checkpoint_version"]
    version = f"{base}+class_entropy"
    assert scored["model_version"] == version and scored["strategy"] == "class_entropy"
    assert version in result.output  # the cycle table names the strategy through the model_version

    records = {int(r.image_id): r for r in read_jsonl(scored["scores"])}
    assert sorted(records) == info["pool"]
    entropy = {t: float(np.mean([i.entropy for i in r.instances])) if r.instances else 0.0
               for t, r in records.items()}
    by_entropy = sorted(info["pool"], key=lambda t: (-entropy[t], info["pool"].index(t)))

    preds = current_predictions(ls_client, info["project_id"])
    assert sorted(preds) == info["pool"]
    for task, ps in preds.items():
        (p,) = ps
        assert p.model_version == version
        assert p.score == pytest.approx(by_entropy.index(task) / len(by_entropy), abs=1e-9)
        # the regions are the backend's: each region's score is an instance's s (eq. 2)
        assert all(any(abs(r["score"] - i.s) <= 1e-9 for i in records[task].instances) for r in p.result)
    # (a detection whose mask is empty at 0.5 draws nothing, so a task may hold no region)
    assert any(preds[t][0].result for t in info["pool"])
    project = ls_client.projects.get(id=info["project_id"])
    assert project.model_version == version and project.sampling == "Uncertainty sampling"

    nxt = next_task(label_studio, ls_client, info["project_id"])
    assert nxt["id"] == by_entropy[0], (nxt, entropy)

    status = run_cli(info, "status", "--project", "ich")
    assert status.exit_code == 0 and "ordered by class_entropy" in status.output, status.output

    again = run_cli(info, "score", "--project", "ich")
    assert again.exit_code == 0 and "0 predictions pushed" in again.output, again.output

    # back to the default strategy: every task's prediction is replaced, its score is S_i again
    info["toml"].write_text(TSP_TOML.format(project_id=info["project_id"]))
    back = run_cli(info, "score", "--project", "ich")
    assert back.exit_code == 0, back.output
    # with clusters (the default) the labeled tasks get a prediction for their cluster too
    pushed = len(info["pool"]) + len(info["labeled"])
    assert f"{base}: {len(info['pool'])} tasks scored, {pushed} predictions pushed" in back.output
    preds = current_predictions(ls_client, info["project_id"])
    for task in info["pool"]:
        (p,) = preds[task]
        assert p.model_version == base
        assert p.score == pytest.approx(records[task].S, abs=1e-9)  # the score file's S_i
    assert ls_client.projects.get(id=info["project_id"]).model_version == base
