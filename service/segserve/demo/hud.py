"""The heads-up display drawn on the overlay: FPS, latency, server stage times, class legend."""

from __future__ import annotations

import cv2
import numpy as np

from segserve.demo.records import RollingStats
from segserve.labels import LabelMap

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _panel(image: np.ndarray, x: int, y: int, w: int, h: int) -> None:
    """Darken a rectangle so white text stays readable on any scene."""
    h = min(h, image.shape[0] - y)
    w = min(w, image.shape[1] - x)
    if h > 0 and w > 0:
        roi = image[y : y + h, x : x + w]
        cv2.addWeighted(roi, 0.35, np.zeros_like(roi), 0.65, 0.0, dst=roi)


def draw_hud(image: np.ndarray, stats: RollingStats, labels: LabelMap | None, title: str = "") -> np.ndarray:
    """Draw in place on a BGR image (and return it)."""
    scale = max(0.4, min(image.shape[1] / 1600.0, 1.0))
    line = int(22 * scale / 0.6)
    lat = stats.latency()
    stages = stats.stages_ms()
    text = [
        title,
        f"{stats.fps():5.1f} FPS   latency p50 {lat['p50']:.0f} ms  p95 {lat['p95']:.0f} ms",
    ]
    if stages:
        text.append("server ms: " + " ".join(f"{k[:5]} {v:.1f}" for k, v in stages.items()))
        if stats.records:
            text.append(f"batch {stats.records[-1].batch_size}")
    text = [t for t in text if t]
    width = int(max(cv2.getTextSize(t, _FONT, scale, 1)[0][0] for t in text)) + 16
    _panel(image, 0, 0, width, line * len(text) + 10)
    for i, t in enumerate(text):
        cv2.putText(image, t, (8, line * (i + 1)), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if labels is not None:
        draw_legend(image, labels, scale)
    return image


def draw_legend(image: np.ndarray, labels: LabelMap, scale: float) -> None:
    """Class names with their colour swatches, top right."""
    line = int(20 * scale / 0.6)
    box = line - 6
    names = [c.name for c in labels.classes]
    width = int(max(cv2.getTextSize(n, _FONT, scale * 0.8, 1)[0][0] for n in names)) + box + 20
    x0 = image.shape[1] - width
    _panel(image, x0, 0, width, line * len(names) + 8)
    for i, c in enumerate(labels.classes):
        y = 6 + i * line
        cv2.rectangle(image, (x0 + 6, y), (x0 + 6 + box, y + box), tuple(int(v) for v in c.color[::-1]), -1)
        cv2.putText(
            image, c.name, (x0 + box + 12, y + box - 2), _FONT, scale * 0.8, (255, 255, 255), 1, cv2.LINE_AA
        )
