"""The live window under a virtual X display (Xvfb), checked with a screenshot.

Skipped where Xvfb or pygame is missing; CI needs the `xvfb` package (apt-get install xvfb) to run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from demo_support import SRC

pytest.importorskip("pygame")
pytestmark = pytest.mark.skipif(
    shutil.which("Xvfb") is None, reason="Xvfb is not installed (apt-get install xvfb)"
)


@pytest.fixture
def display():
    number = 90 + os.getpid() % 500
    xvfb = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1024x600x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + 10
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if xvfb.poll() is not None or not socket.exists():
        pytest.skip("Xvfb did not start")
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(5)


def test_live_window_shows_the_overlay(display: str, target: str, long_clip: Path, tmp_path: Path) -> None:
    from PIL import ImageGrab

    env = {**os.environ, "PYTHONPATH": SRC, "DISPLAY": display, "SDL_AUDIODRIVER": "dummy"}
    env.pop("WAYLAND_DISPLAY", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "segserve",
            "demo",
            "--source",
            str(long_clip),
            "--server",
            target,
            "--frames",
            "100",
            "--out",
            str(tmp_path / "unused"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        shot = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.5)
            image = np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))
            if image.std() > 20:  # the root window is black until the demo's window shows a frame
                shot = image
                break
            if process.poll() is not None:
                break
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert shot is not None, "the window never showed a frame"
    ImageGrabPath = tmp_path / "screenshot.png"  # kept for a person to look at when the test fails
    from PIL import Image

    Image.fromarray(shot).save(ImageGrabPath)
    rows, cols = np.nonzero(shot.max(axis=2) > 0)
    window = shot[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert window.shape[:2] == (180, 320)  # the clip's size: the overlay with its HUD
    assert len(np.unique(window.reshape(-1, 3), axis=0)) > 50  # a real picture, not a blank surface
    assert not (tmp_path / "unused").exists()  # live mode writes no files
    assert "frames ok" in out
