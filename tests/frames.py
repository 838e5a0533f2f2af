"""Synthetic frames with real structure (sky, road, objects), made in code for the tests."""

from __future__ import annotations

import cv2
import numpy as np


def street_frame(width: int = 1920, height: int = 1080, seed: int = 0) -> np.ndarray:
    """A BGR frame with a sky gradient, a grey road, a green verge and a few 'cars'."""
    rng = np.random.default_rng(seed)
    frame = np.zeros((height, width, 3), np.uint8)
    horizon = height // 2
    frame[:horizon] = np.linspace(250, 150, horizon, dtype=np.uint8)[:, None, None] * np.array(
        [1.0, 0.85, 0.6]
    )
    frame[horizon:] = (90, 90, 90)
    cv2.fillPoly(
        frame, [np.array([[0, height], [0, horizon + 40], [width // 3, horizon]], np.int32)], (40, 140, 60)
    )
    for _ in range(3):
        x = int(rng.integers(0, width - width // 10))
        y = int(rng.integers(horizon, height - height // 12))
        colour = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.rectangle(frame, (x, y), (x + width // 10, y + height // 12), colour, -1)
    noise = rng.integers(0, 12, frame.shape, dtype=np.uint8)
    return cv2.add(frame, noise)


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", frame)[1].tobytes()
