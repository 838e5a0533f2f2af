"""Fixtures for the demo tests: a video file and an image folder made in code."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # demo_support

from demo_support import LONG_CLIP_FRAMES, write_video
from frames import street_frame


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 24)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "long.mp4", LONG_CLIP_FRAMES)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(5):
        cv2.imwrite(str(folder / f"frame_{i:03d}.jpg"), street_frame(256, 144, seed=i))
    (folder / "notes.txt").write_text("not an image")
    return folder
