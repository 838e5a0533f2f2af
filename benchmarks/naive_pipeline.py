"""The naive reference: the same work as the service's pipeline, written the obvious numpy way.

1080p JPEG in -> decode -> resize to the model's input -> float normalise + HWC->CHW transpose in
numpy -> the float-logits network (ONNX Runtime, the served model's own network cut out of it) ->
numpy argmax over the logits -> nearest resize of the ids to the frame -> numpy fancy-index colorize
-> float blend -> PNG mask (OpenCV's default compression) and JPEG overlay out.

What it shares with the service, so the comparison is about the work around the network: the same
decoder (cv2.imdecode), the same linear input resize, the same network on the same ONNX Runtime
session options, the same JPEG quality. ``segserve bench`` loads this file by path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

STAGES = (
    "decode",
    "resize",
    "normalize",
    "network",
    "argmax",
    "mask_resize",
    "colorize",
    "blend",
    "png_mask",
    "jpeg_overlay",
)


@dataclass
class NaiveResult:
    mask_png: bytes
    overlay_jpeg: bytes
    stages_ms: dict[str, float] = field(default_factory=dict)


class NaivePipeline:
    def __init__(
        self,
        session,
        input_name: str,
        input_hw: tuple[int, int],
        mean,
        std,
        palette_rgb: np.ndarray,
        alpha: float = 0.5,
        jpeg_quality: int = 85,
    ):
        """``session``: an onnxruntime session of the float network (float [N,3,H,W] -> logits [N,C,h,w])."""
        self.session = session
        self.input_name = input_name
        self.input_hw = input_hw
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.palette_bgr = np.ascontiguousarray(np.asarray(palette_rgb, np.uint8)[:, ::-1])
        self.alpha = alpha
        self.jpeg_quality = jpeg_quality

    def process(self, jpeg: bytes) -> NaiveResult:
        t = [time.perf_counter()]

        def mark() -> None:
            t.append(time.perf_counter())

        frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        mark()
        h, w = self.input_hw
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        mark()
        rgb = small[:, :, ::-1].astype(np.float32)
        x = ((rgb - self.mean) / self.std).transpose(2, 0, 1)[None]
        x = np.ascontiguousarray(x)
        mark()
        logits = self.session.run(None, {self.input_name: x})[0]
        mark()
        ids = np.argmax(logits[0], axis=0).astype(np.uint8)
        mark()
        mask = cv2.resize(ids, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        mark()
        colours = self.palette_bgr[mask]
        mark()
        overlay = (
            frame.astype(np.float32) * (1.0 - self.alpha) + colours.astype(np.float32) * self.alpha
        ).astype(np.uint8)
        mark()
        mask_png = cv2.imencode(".png", mask)[1].tobytes()
        mark()
        overlay_jpeg = cv2.imencode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])[
            1
        ].tobytes()
        mark()
        stages = {name: (t[i + 1] - t[i]) * 1000 for i, name in enumerate(STAGES)}
        return NaiveResult(mask_png, overlay_jpeg, stages)
