"""tsp_model.core.atomic: the one place files are written atomically."""

from __future__ import annotations

import os
import stat

import pytest

from tsp_model.core.atomic import atomic_open, atomic_save, atomic_write_text


def test_failure_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "scores.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl"]


def test_success_replaces_and_gives_plain_open_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_save_hands_a_hidden_temp_path_to_the_writer(tmp_path):
    seen = []

    def save(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"png")

    atomic_save(tmp_path / "x.png", save, suffix=".png")
    assert seen[0].name.startswith(".x.png.") and seen[0].parent == tmp_path
    assert (tmp_path / "x.png").read_bytes() == b"png"


def test_ctrl_c_during_a_write_lands_after_the_file_is_in_place(tmp_path):
    import signal

    from tsp_model.core.atomic import sigint_deferred

    # as in a terminal: a test run started in the background (nohup, CI job control) may have
    # inherited SIGINT ignored, and an ignored signal never becomes a KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as fh:
            fh.write("new ")
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of writing
            fh.write("and whole")
    assert target.read_text() == "new and whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with sigint_deferred():  # nothing received: nothing raised
        pass
    signal.signal(signal.SIGINT, previous)
