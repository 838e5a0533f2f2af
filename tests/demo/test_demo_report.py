"""The latency report: warm-up apart from steady state (the rule in segserve.demo.warmup), machine load."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from segserve.demo.load import LoadMonitor
from segserve.demo.records import FrameRecord, summarize, summary_line
from segserve.demo.warmup import RUN, warmup_frames


@pytest.mark.parametrize(
    ("latencies", "expected"),
    [
        ([340, 250, 120, 60] + [20] * 40, 4),  # the spike, then the backlog draining
        ([20] * 40, 0),  # steady from the first frame
        ([340, 20, 300, 250, 100] + [20] * 40, 5),  # one dip inside warm-up does not end it
        ([20] * 4 + [90, 20, 20, 20, 20, 20] * 8, 0),  # periodic spikes are steady state's own
        ([20, 90, 95, 20, 20] + [20] * 40, 3),  # two spikes early: warm-up after all
        ([340, 20, 21], 0),  # too short to tell
        (list(range(400, 0, -5)), 40),  # never settles within the first half: at most half the frames
    ],
)
def test_warmup_rule(latencies: list[float], expected: int) -> None:
    assert warmup_frames(latencies) == expected


def _record(i: int, latency_ms: float) -> FrameRecord:
    t = 1_000_000 + i * 40_000
    return FrameRecord(i, t, t, t + int(latency_ms * 1000), "ok", 1, 5000, inference_us=3000)


def test_summary_reports_warmup_and_steady_state_apart() -> None:
    records = [_record(i, v) for i, v in enumerate([340, 260, 150] + [20 + i % 3 for i in range(60)])]
    records.append(FrameRecord(63, 0, 0, 0, "dropped"))
    summary = summarize(records)
    assert (summary["frames"], summary["ok"], summary["dropped"]) == (64, 63, 1)
    assert summary["warmup"]["frames"] == 3 and summary["steady"]["frames"] == 60
    assert summary["warmup"]["latency_ms"]["max"] == 340
    assert summary["steady"]["latency_ms"]["p99"] < 23  # the spike is not in steady state's tail
    assert str(RUN) in summary["warmup_rule"]
    line = summary_line(summary)
    assert "warm-up 3 frames (latency max 340 ms)" in line and "steady state (60 frames)" in line


def test_summary_of_a_run_without_answers() -> None:
    summary = summarize([FrameRecord(0, 0, 0, 0, "error: UNAVAILABLE down")])
    assert summary["steady"] == {"frames": 0} and summary["errors"] == 1
    assert "no frame was answered" in summary_line(summary)


BURNER = "import time\nwhile time.process_time() < 0.3: pass\nprint('done', flush=True)\ninput()"


def test_load_monitor_records_the_cpu_of_the_watched_processes() -> None:
    """A child burns 0.3 s of CPU and says so: its share is recorded, and the machine's."""
    burner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nwhile time.process_time() < 0.3: pass\nprint('done', flush=True)\ninput()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        monitor = LoadMonitor({"client": os.getpid(), "burner": burner.pid}).start()
        assert burner.stdout.readline() == "done\n"
        load = monitor.stop()
    finally:
        burner.communicate("\n", timeout=30)
    assert load.process_cpu_percent["burner"] > 0
    assert load.cpu_percent_mean > 0 and load.cpu_percent_max >= load.cpu_percent_mean
    assert load.cpu_count >= load.cpus_usable >= 1
    assert len(load.loadavg_start) == len(load.loadavg_end) == 3
    assert load.cpu_model
    assert "CPUs" in load.line() and "burner" in load.line()
