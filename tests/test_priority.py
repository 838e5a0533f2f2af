from __future__ import annotations

import os
import sys
import threading

import pytest
from segserve import priority

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_lowered_work_and_the_threads_it_starts_run_below_the_caller() -> None:
    caller = _nice()
    seen: dict[str, int] = {}

    def build() -> str:
        seen["builder"] = _nice()
        child = threading.Thread(target=lambda: seen.__setitem__("child", _nice()))
        child.start()
        child.join()
        return "built"

    assert priority.call_lowered(build) == "built"
    expected = min(19, caller + priority.COMPUTE_NICENESS)
    assert seen == {"builder": expected, "child": expected}
    assert _nice() == caller  # the calling thread (the event loop) keeps its priority


def test_errors_of_lowered_work_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("no model")

    with pytest.raises(ValueError, match="no model"):
        priority.call_lowered(fail)
