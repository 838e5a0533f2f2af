"""Helpers for the demo tests: small real inputs made in code and the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
from frames import street_frame

SRC = str(Path(__file__).resolve().parents[2] / "service")
# 30 s at 25 fps: the Ctrl-C tests interrupt it after ~1.5 s, with room to spare on a loaded machine
LONG_CLIP_FRAMES = 750


def write_video(path: Path, frames: int, size: tuple[int, int] = (320, 180), fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(street_frame(*size, seed=i % 7))
    writer.release()
    return path


def run_module(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a subprocess (what a user types)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": SRC},
    )


def segserve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_module("segserve", *args, timeout=timeout)
