"""A missing file, a webcam that does not exist, a server that is down: one line, non-zero exit."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from demo_support import run_module, segserve
from segserve.demo.errors import DemoError
from segserve.demo.sources import open_source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(result, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]


def test_missing_file(tmp_path: Path) -> None:
    result = segserve("demo", "--source", str(tmp_path / "nope.mp4"), "--headless", "--out", str(tmp_path))
    _one_line_error(result, "not found", "nope.mp4")


def test_missing_webcam(tmp_path: Path) -> None:
    result = segserve("demo", "--source", "57", "--headless", "--out", str(tmp_path))
    _one_line_error(result, "webcam", "57")


def test_server_down(tmp_path: Path, clip: Path) -> None:
    result = segserve(
        "demo",
        "--source",
        str(clip),
        "--server",
        f"127.0.0.1:{_free_port()}",
        "--headless",
        "--out",
        str(tmp_path),
        "--connect-timeout",
        "1",
    )
    _one_line_error(result, "not reachable")


def test_missing_model_for_make_demo(tmp_path: Path) -> None:
    result = run_module(
        "segserve.demo.run_demo", "--model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)
    )
    _one_line_error(result, "model not found")


@pytest.mark.parametrize("make", ["empty_dir", "text_file", "bad_video"])
def test_unreadable_sources(tmp_path: Path, make: str) -> None:
    if make == "empty_dir":
        spec = tmp_path / "empty"
        spec.mkdir()
        expected = "no images"
    elif make == "text_file":
        spec = tmp_path / "frame.jpg"
        spec.write_text("not a jpeg")
        expected = "not a readable image"
    else:
        spec = tmp_path / "clip.mp4"
        spec.write_bytes(b"\x00" * 1000)
        expected = "not a video"
    with pytest.raises(DemoError, match=expected):
        open_source(str(spec))
