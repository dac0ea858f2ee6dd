"""Ctrl-C while `tsp-sync` saves a checkpoint: exit 130, one line, the file intact.

A subprocess runs a `tsp-sync` command (the real click group and error handling) that saves a
~100 MB checkpoint over and over with `save_checkpoint`; SIGINT is sent at several delays after a
save has started (its temporary file exists). Before the fix, SIGINT inside `torch.save` made its
zip writer fail on cleanup with a RuntimeError: a traceback and exit 1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

def _harness(tmp_path: Path) -> Path:
    """A script that adds a `save-loop` command to the real `tsp-sync` group and runs the group."""
    script = tmp_path / "save_loop.py"
    script.write_text(
        "import signal\n"
        "import sys\n"
        "import torch\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (a background job ignores it)\n"
        "from tsp_cli.errors import handle_errors\n"
        "from tsp_cli.main import cli\n"
        "from tsp_model.engine.checkpoint import save_checkpoint\n"
        "PATH = sys.argv.pop(1)\n"
        "@cli.command('save-loop')\n"
        "@handle_errors\n"
        "def save_loop():\n"
        "    state = {'model': {f'w{i}': torch.randn(256, 1024) for i in range(100)}, 'config': {},\n"
        "             'class_names': [], 'epoch': 1, 'model_version': 'new'}\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        save_checkpoint(PATH, state)\n"
        "cli(prog_name='tsp-sync')\n"
    )
    return script


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.08, 0.2])
def test_sigint_during_a_checkpoint_save(tmp_path, delay):
    import torch

    from tsp_model.engine.checkpoint import load_checkpoint, save_checkpoint

    target = tmp_path / "models" / "model.pt"
    save_checkpoint(target, {"model": {"w": torch.zeros(1)}, "config": {}, "class_names": [], "epoch": 0,
                             "model_version": "old"})
    proc = subprocess.Popen([sys.executable, str(_harness(tmp_path)), str(target), "--no-progress", "save-loop"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 120
        while not list(target.parent.glob(".model.pt.*")):  # a save is under way
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and err.startswith("Interrupted: "), err
    assert load_checkpoint(target)["model_version"] in ("old", "new")  # one whole file, old or new
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]  # no temporary file left
