"""Shared test setup: small thread pools so the suite behaves on a 2-core machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# ---- H4 backend / Label Studio fixtures (begin) --------------------------------------------
# A real Label Studio (from .venv-ls or $TSP_LS_BIN) and a real `tsp-backend` process, started
# once per test session for tests marked `integration`. Helpers live in tests/ls_fixtures.py.
import shutil as _h4_shutil  # noqa: E402
import time as _h4_time  # noqa: E402
from pathlib import Path as _H4Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A running local Label Studio 1.23 (``LocalLabelStudio``): ``.url``, ``.token``, ``.files_root``."""
    from tsp_cli.local_server import LocalLabelStudio, default_ls_bin

    ls_bin = default_ls_bin()
    if not _H4Path(ls_bin).exists() and _h4_shutil.which(ls_bin) is None:
        if os.environ.get("CI"):  # CI installs it (scripts/setup_env.sh): missing there is a failure
            pytest.fail(f"label-studio not installed ({ls_bin}); scripts/setup_env.sh should have installed it")
        pytest.skip(f"label-studio not installed ({ls_bin}); python3 -m venv .venv-ls && "
                    ".venv-ls/bin/pip install label-studio==1.23.2, or set TSP_LS_BIN")
    server = LocalLabelStudio(tmp_path_factory.mktemp("label-studio"), ls_bin=ls_bin)
    t0 = _h4_time.monotonic()
    server.start()
    server.start_seconds = _h4_time.monotonic() - t0
    print(f"\n[label_studio] up at {server.url} in {server.start_seconds:.1f} s")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)


@pytest.fixture(scope="session")
def tsp_backend_server(tmp_path_factory, label_studio):
    """`tsp-backend` on a free port with a tiny checkpoint and basic auth ("ls-ml"/"ml-secret").

    Besides Label Studio's files it may fetch from http://127.0.0.1:9/ (nothing listens there:
    the tests see an allowed but unreachable source).
    """
    from tests.ls_fixtures import BackendProcess, make_tiny_checkpoint

    model_dir = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(model_dir, size=64, detections=4)
    auth = ("ls-ml", "ml-secret")
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "BASIC_AUTH_USER": auth[0], "BASIC_AUTH_PASS": auth[1], "TSP_ALLOWED_URL_PREFIXES": "http://127.0.0.1:9/"}
    backend = BackendProcess(model_dir, env, model_dir.parent / "tsp-backend.log", auth=auth).start()
    try:
        yield {"url": backend.url, "model_dir": model_dir, "auth": auth, "log": backend.log_path, "proc": backend.proc}
    finally:
        backend.stop()
# ---- H4 backend / Label Studio fixtures (end) ----------------------------------------------
