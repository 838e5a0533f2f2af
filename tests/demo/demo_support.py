"""Helpers for the demo tests: small real inputs made in code and the real command line."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
from frames import street_frame

SRC = str(Path(__file__).resolve().parents[2] / "service")
# 30 s at 25 fps: the Ctrl-C tests interrupt it after ~1.5 s, with room to spare on a loaded machine
LONG_CLIP_FRAMES = 3000  # 2 minutes at 25 fps: no loaded machine gets to its end first


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


def popen_with_ctrl_c(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` whose child takes Ctrl-C as Python's default does. A test run started as
    a background job (``cmd &`` in a script) has SIGINT ignored, and a child inherits that (Python
    then never raises KeyboardInterrupt); a handler the parent sets is reset to the default by
    exec. No ``preexec_fn``: forking a process with gRPC's threads running and then running Python
    in the child before exec is unsafe (a child died at start with an epoll error)."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class DemoProcess:
    """``python -m module args`` in the background, its stdout read line by line on a thread."""

    def __init__(self, module: str, *args: str):
        self.process = popen_with_ctrl_c(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, pattern: str, timeout: float = 120.0) -> re.Match:
        """The first stdout line matching ``pattern``; AssertionError if the process ends or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.seen}") from None
            if line is None:
                raise AssertionError(f"exited before {pattern!r}: {self.seen} {self.process.stderr.read()}")
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match

    def finish(self, timeout: float = 180.0) -> tuple[int, str, str]:
        """Wait for the exit: (code, all stdout, stderr)."""
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        err = self.process.stderr.read() if self.process.stderr else ""
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code, "".join(self.seen), err
