"""What a push keeps and deletes (``tsp_cli.commands.score.CurrentPredictions``), without a server."""

from tsp_cli.commands.score import CurrentPredictions


def test_the_last_claim_of_a_task_decides():
    # score() claims with the queue score first; push_predictions claims again with the score it
    # would push: if that one matches what the task holds, its prediction must stay
    cur = CurrentPredictions("v", {6: [(15, 0.375)]})
    assert cur.claim(6, 0.4) is True  # not the stored score: would push a new one
    assert cur.claim(6, 0.375) is False  # the pushed score is the stored one: keep it
    assert cur.surplus() == [] and cur.expected() == 1


def test_replaced_duplicate_and_unclaimed_predictions():
    cur = CurrentPredictions("v", {1: [(10, 0.2)], 2: [(11, 0.3), (12, 0.3), (13, 0.9)], 3: [(14, 0.1), (15, 0.5)]})
    assert cur.claim(1, 0.7) is True  # moved: a new one is pushed, 10 goes
    assert cur.claim(2, 0.3) is False  # held twice: the newest with this score stays
    assert cur.claim(4, 0.6) is True  # nothing yet
    # task 3 is not claimed (labeled since the pull): its newest stays
    assert cur.surplus() == [10, 11, 13, 14]
    assert cur.expected() == 4
