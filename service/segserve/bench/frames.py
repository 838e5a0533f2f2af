"""The real frames every layer is measured on: CamVid val (480x360), 1080p versions of them, the demo clip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segserve.demo.errors import DemoError

JPEG_QUALITY = 90


@dataclass
class FrameSet:
    name: str
    width: int
    height: int
    jpegs: list[bytes] = field(default_factory=list)
    origin: str = ""

    @property
    def mean_kb(self) -> float:
        return float(np.mean([len(j) for j in self.jpegs])) / 1024 if self.jpegs else 0.0

    def describe(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "frames": len(self.jpegs),
            "mean_jpeg_kb": round(self.mean_kb, 1),
            "origin": self.origin,
        }


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()


def load_frame_sets(images_dir: Path, video: Path | None, count: int) -> dict[str, FrameSet]:
    """``count`` frames per set. Raises DemoError when the image folder has no images."""
    paths = sorted(p for p in Path(images_dir).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise DemoError(f"no images in {images_dir} (give --images DIR)")
    paths = (paths * (count // len(paths) + 1))[:count]
    native = FrameSet("camvid", 0, 0, origin=f"{images_dir} (JPEG as stored)")
    hd = FrameSet(
        "camvid_1080p", 1920, 1080, origin=f"{images_dir} resized to 1920x1080 (linear), JPEG q{JPEG_QUALITY}"
    )
    for p in paths:
        data = p.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None, f"cannot decode {p}"
        native.height, native.width = image.shape[:2]
        native.jpegs.append(data if p.suffix.lower() in (".jpg", ".jpeg") else _jpeg(image))
        hd.jpegs.append(_jpeg(cv2.resize(image, (1920, 1080), interpolation=cv2.INTER_LINEAR)))
    native.name = f"camvid_{native.height}p"
    sets = {native.name: native, hd.name: hd}
    if video is not None and Path(video).is_file():
        capture = cv2.VideoCapture(str(video))
        clip = FrameSet("clip", 0, 0, origin=f"{video} frames, JPEG q{JPEG_QUALITY}")
        while len(clip.jpegs) < count:
            ok, image = capture.read()
            if not ok:
                break
            clip.height, clip.width = image.shape[:2]
            clip.jpegs.append(_jpeg(image))
        capture.release()
        if clip.jpegs:
            clip.name = f"clip_{clip.height}p"
            sets[clip.name] = clip
    return sets


def model_inputs(frames: FrameSet, input_hw: tuple[int, int]) -> list[np.ndarray]:
    """RGB uint8 frames at the model's input size (what the engine receives)."""
    h, w = input_hw
    out = []
    for data in frames.jpegs:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None, "frame sets hold JPEGs this module encoded or read as images"
        out.append(cv2.cvtColor(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB))
    return out
