"""Progress: a bar on a terminal, a line per 10% in a log (not hundreds of carriage returns)."""

from __future__ import annotations

import io

from tsp_model.core.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_tenth_of_the_work():
    log = io.StringIO()
    assert list(progress(range(95), desc="score pool", unit="img", stream=log)) == list(range(95))
    lines = log.getvalue().splitlines()
    # tenths of 95 are steps of ceil(9.5) = 10 images: 10, 20, ... 90, then the end at 95
    assert [line.split()[2] for line in lines] == [f"{n}/95" for n in (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)]
    assert lines[0].startswith("score pool: 10/95 img (10%, ") and "\r" not in log.getvalue()


def test_updates_by_hand_a_postfix_and_no_total():
    log = io.StringIO()
    bar = progress(total=4, desc="epochs", unit="epoch", stream=log)
    for _ in range(4):
        bar.set_postfix(loss="0.50")
        bar.update(1)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("epochs: 4/4 epoch (100%, ") and "loss=0.50" in log.getvalue()
    assert len(log.getvalue().splitlines()) == 4  # 4 epochs: each is a tenth or more
    log = io.StringIO()
    bar = progress(desc="push", unit="task", stream=log)
    bar.update(250)
    bar.close()
    assert [line.split()[1] for line in log.getvalue().splitlines()] == ["250"]


def test_silent_when_disabled_or_kept_out_of_logs_and_a_bar_on_a_terminal():
    log = io.StringIO()
    list(progress(range(50), stream=log, enabled=False))
    list(progress(range(50), stream=log, log_lines=False))
    assert log.getvalue() == ""
    term = _Terminal()
    list(progress(range(50), desc="train", stream=term))
    assert "\r" in term.getvalue() and "50/50" in term.getvalue()  # tqdm's bar
