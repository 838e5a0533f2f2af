from __future__ import annotations

import math

from segserve.train.cli import DEFAULT_MAX_MINUTES, training_minutes


def test_a_step_budget_is_not_cut_short_by_the_default_time_budget() -> None:
    """A paused or busy run spends wall time: with --max-steps alone, only the steps end the run
    (and set the learning-rate schedule); a time budget applies when it is asked for."""
    assert training_minutes(None, 4200) == math.inf
    assert training_minutes(None, 0) == DEFAULT_MAX_MINUTES
    assert training_minutes(30.0, 4200) == 30.0
    assert training_minutes(30.0, 0) == 30.0
