"""The demo against a real server: headless video + CSV + plot, image folders, Ctrl-C, `make demo`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
from demo_support import LONG_CLIP_FRAMES, SRC, popen_with_ctrl_c, segserve
from segserve.cli import main
from segserve.demo.video import probe


def _video_frames(path: Path) -> int:
    info = probe(path)
    assert info.browser_playable, info
    return info.frames


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and cv2.imread(str(path)) is not None


def test_headless_video_source(target: str, clip: Path, tmp_path: Path, capsys) -> None:
    code = main(
        [
            "demo",
            "--source",
            str(clip),
            "--server",
            target,
            "--headless",
            "--max-rate",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert _video_frames(tmp_path / "demo.mp4") == 24
    first = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    ok, frame = first.read()
    assert ok and frame.shape == (180, 640, 3)  # camera | overlay side by side
    rows = _rows(tmp_path / "demo_frames.csv")
    assert [int(r["frame_id"]) for r in rows] == list(range(24))
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert int(r["capture_us"]) <= int(r["send_us"]) <= int(r["receive_us"])
        assert int(r["batch_size"]) >= 1 and int(r["inference_us"]) > 0 and int(r["server_total_us"]) > 0
    assert _is_png(tmp_path / "demo_latency.png")
    report = json.loads((tmp_path / "demo_summary.json").read_text())
    summary = report["summary"]
    assert summary["frames"] == 24 and summary["ok"] == 24
    assert summary["warmup"]["frames"] + summary["steady"]["frames"] == 24
    assert summary["steady"]["latency_ms"]["p50"] > 0 and "warm-up ends" in summary["warmup_rule"]
    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and len(machine["loadavg_start"]) == 3
    assert machine["process_cpu_percent"]["client"] > 0
    assert report["providers"] and report["video"]["codec"] == "libx264"
    out = capsys.readouterr().out
    assert "frames ok" in out and "steady state" in out and "machine:" in out


def test_realtime_pacing(target: str, clip: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    assert (
        main(
            [
                "demo",
                "--source",
                str(clip),
                "--server",
                target,
                "--headless",
                "--frames",
                "10",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert time.monotonic() - started >= 9 / 25  # 10 frames at the clip's 25 fps
    assert len(_rows(tmp_path / "demo_frames.csv")) == 10


def test_image_folder(target: str, image_folder: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "demo",
                "--source",
                str(image_folder),
                "--server",
                target,
                "--headless",
                "--max-rate",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert len(_rows(tmp_path / "demo_frames.csv")) == 5
    assert _video_frames(tmp_path / "demo.mp4") == 5


def _wait_for_line(process: subprocess.Popen, text: str) -> str:
    """Read the child's stdout until a line containing ``text`` (pytest's timeout guards a hang);
    returns what was read, so the caller can still check it."""
    seen = ""
    for line in process.stdout:  # type: ignore[union-attr]
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"the demo ended before {text!r}: {seen}{process.stderr.read()}")  # type: ignore[union-attr]


def test_ctrl_c_still_writes_the_report(target: str, long_clip: Path, tmp_path: Path) -> None:
    process = popen_with_ctrl_c(
        [
            sys.executable,
            "-m",
            "segserve",
            "demo",
            "--source",
            str(long_clip),
            "--server",
            target,
            "--headless",
            "--out",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    csv_path = tmp_path / "demo_frames.csv"
    _wait_for_line(process, "first frame answered")  # frames are flowing: interrupt mid-clip
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)  # a hang guard, not a timing bound
    assert process.returncode == 0, err
    assert "Traceback" not in err
    rows = _rows(csv_path)
    assert 0 < len(rows) < LONG_CLIP_FRAMES
    assert _video_frames(tmp_path / "demo.mp4") == len(rows)
    assert _is_png(tmp_path / "demo_latency.png")
    assert json.loads((tmp_path / "demo_summary.json").read_text())["interrupted"] is True


def test_run_demo_starts_and_stops_its_server(toy_model: Path, clip: Path, tmp_path: Path) -> None:
    """What `make demo` runs, on the toy model and a short clip."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segserve.demo.run_demo",
            "--model",
            str(toy_model),
            "--source",
            str(clip),
            "--out",
            str(tmp_path),
            "--max-rate",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout and "server stopped" in result.stdout and "latency" in result.stdout
    assert len(_rows(tmp_path / "demo_frames.csv")) == 24
    assert _video_frames(tmp_path / "demo.mp4") == 24
    assert (tmp_path / "server.log").is_file()
    machine = json.loads((tmp_path / "demo_summary.json").read_text())["machine"]
    assert set(machine["process_cpu_percent"]) == {"client", "server"}  # the server it started, too


def test_demo_help_lists_the_options() -> None:
    result = segserve("demo", "--help")
    assert result.returncode == 0
    for flag in ("--source", "--server", "--headless", "--realtime", "--max-rate", "--out"):
        assert flag in result.stdout


def test_ctrl_c_in_a_terminal_during_make_demo(toy_model: Path, long_clip: Path, tmp_path: Path) -> None:
    """Ctrl-C signals the whole foreground process group: the demo still writes its report and stops the
    server it started (which must not have died first)."""
    process = popen_with_ctrl_c(
        [
            sys.executable,
            "-m",
            "segserve.demo.run_demo",
            "--model",
            str(toy_model),
            "--source",
            str(long_clip),
            "--out",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        start_new_session=True,
    )
    before = _wait_for_line(process, "first frame answered")
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)  # a hang guard, not a timing bound
    out = before + out
    assert process.returncode == 0, err
    assert "Traceback" not in err and "error" not in err
    assert "server stopped" in out
    assert 0 < len(_rows(tmp_path / "demo_frames.csv")) < LONG_CLIP_FRAMES
