"""The department setup, run: Label Studio on PostgreSQL with the compose file's settings (no
container: a throwaway cluster from the distribution's packages on 127.0.0.1), then a full cycle
against it (pull, retrain a tiny model, score and push with clusters, reorder, /next)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter

import pytest
from label_studio_sdk import LabelStudio

from tests.pg_fixtures import LocalPostgres, compose_label_studio_env
from tests.test_cli_integration import N_ANNOTATED, N_IMAGES, TSP_TOML, configured_project, current_predictions, \
    next_task, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ls_on_postgres(tmp_path_factory):
    import os

    from tests.pg_fixtures import _pg_bin
    from tsp_cli.local_server import LocalLabelStudio, default_ls_bin

    try:
        _pg_bin("initdb")
    except FileNotFoundError as exc:
        if os.environ.get("CI"):  # scripts/setup_env.sh installs it: missing there is a failure
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    pg = LocalPostgres().start()
    try:
        env = compose_label_studio_env(pg)
        t0 = time.monotonic()
        server = LocalLabelStudio(tmp_path_factory.mktemp("ls-postgres"), ls_bin=default_ls_bin(), extra_env=env)
        server.start()
        print(f"\n[postgres] Label Studio on PostgreSQL up in {time.monotonic() - t0:.1f} s")
        try:
            yield server, pg, env
        finally:
            server.stop()
    finally:
        pg.stop()


def _rows(pg: LocalPostgres, env: dict, sql: str) -> str:
    proc = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", env["POSTGRE_USER"], "-d",
                           env["POSTGRE_NAME"], "-tAc", sql], capture_output=True, text=True, timeout=60,
                          env={"PGPASSWORD": env["POSTGRE_PASSWORD"], "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_full_cycle_against_label_studio_on_postgresql(ls_on_postgres, tmp_path):
    server, pg, env = ls_on_postgres
    assert env["DJANGO_DB"] == "default"  # the compose file's switch to PostgreSQL, taken as written
    client = LabelStudio(base_url=server.url, api_key=server.token)
    t0 = time.monotonic()
    ich = configured_project(server, client, tmp_path, TSP_TOML, title="ICH on PostgreSQL")
    cycle = run(ich, "cycle", "--project", "ich")
    seconds = time.monotonic() - t0
    assert cycle.exit_code == 0, cycle.output
    print(f"[postgres] project, annotations and one cycle in {seconds:.1f} s")
    # the project and its predictions live in PostgreSQL, not in a SQLite file
    assert not list(server.data_dir.glob("*.sqlite3"))
    assert _rows(pg, env, f"SELECT title FROM project WHERE id = {ich['project_id']}") == "ICH on PostgreSQL"
    state = json.loads((ich["work"] / "work" / "state.json").read_text())
    version = state["last_cycle"]["model_version"]
    pushed = int(_rows(pg, env, f"SELECT count(*) FROM prediction WHERE project_id = {ich['project_id']} "
                                f"AND model_version = '{version}'"))
    assert pushed == N_IMAGES  # the pool's and, for their clusters, the labeled tasks'
    assert state["last_cycle"]["labeled"] == N_ANNOTATED

    preds = current_predictions(client, ich["project_id"])
    assert all(len(preds[t]) == 1 and preds[t][0].cluster is not None for t in ich["pool"])
    project = client.projects.get(id=ich["project_id"])
    assert project.model_version == version and project.sampling == "Uncertainty sampling"
    # /next serves the lowest S_i of the cluster this annotator labeled least
    pool = [t for t in ich["pool"] if t != ich["skipped"]]
    mine = Counter(preds[t][0].cluster for t in [*ich["labeled"], ich["skipped"]])
    least = min(mine.get(preds[t][0].cluster, 0) for t in pool)
    candidates = {t: preds[t][0].score for t in pool if mine.get(preds[t][0].cluster, 0) == least}
    nxt = next_task(server, client, ich["project_id"])
    assert nxt["id"] in candidates and candidates[nxt["id"]] == pytest.approx(min(candidates.values()), abs=1e-9)
