"""The quickstart as a person runs it: `tsp-sync demo` twice in a row, the second at once.

Each run starts its own Label Studio and backend on fixed ports and stops them on exit
(``--no-serve`` stands in for Ctrl-C), so the second run meets the ports the first one just
closed, with their TIME-WAIT sockets, and the database, token and model it left.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ls_fixtures import leave_time_wait, tcp_sockets
from tsp_cli.local_server import default_ls_bin, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST, B = 4, 3


def _demo(root: Path, port: int, backend_port: int) -> tuple[subprocess.CompletedProcess, float, float]:
    exe = Path(sys.executable).with_name("tsp-sync")
    cmd = [str(exe), "--no-progress", "demo", "--root", str(root), "--count", "10", "--size", "64",
           "--first-batch", str(FIRST), "--batch", str(B), "--epochs", "1", "--port", str(port),
           "--backend-port", str(backend_port), "--no-serve"]
    env = dict(os.environ, TSP_LS_BIN=default_ls_bin(), OMP_NUM_THREADS="1")
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return proc, start, time.monotonic()


def test_second_run_right_after_the_first(tmp_path):
    ls_bin = default_ls_bin()
    if not Path(ls_bin).exists():
        pytest.skip(f"label-studio not installed ({ls_bin})")
    root, port, backend_port = tmp_path / "demo", free_port(), free_port()
    first, _, first_end = _demo(root, port, backend_port)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # the sockets a stopped server leaves (there are usually some already; make sure)
    if Path("/proc/net/tcp").is_file() and not any(s == "06" for _, s in tcp_sockets(port)):
        leave_time_wait(port)
    second, second_start, _ = _demo(root, port, backend_port)
    assert second_start - first_end < 2.0
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "is in use" not in second.stderr
    assert f"labeled slices: 0 -> {FIRST}" in first.stdout
    assert f"labeled slices: {FIRST} -> {FIRST + B}" in second.stdout  # a second cycle, on more labels
    from tsp_cli.commands.review import read_cycles

    assert [c["labeled"] for c in read_cycles(root / "work")] == [FIRST, FIRST + B]
    # the printed status command works pasted into a fresh shell (no virtualenv on PATH)
    status_line = next(line for line in second.stdout.splitlines() if line.startswith("Status "))
    command = status_line.split(None, 1)[1]
    shell = subprocess.run(["bash", "-c", command], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                           cwd="/", capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0, shell.stderr
    assert f"{FIRST + B} labeled" in shell.stdout
