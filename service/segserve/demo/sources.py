"""Frame sources: a webcam index, a video file, an image folder or one image.

``open_source(spec)`` checks the source up front and raises ``DemoError`` with a one-line message
(no OpenCV warnings on stderr) when it cannot be read, so the CLI can exit cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segserve.demo.errors import DemoError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # we report a failed open in one line


@dataclass
class Frame:
    index: int
    image: np.ndarray  # BGR uint8
    capture_us: int  # wall clock (time.time_ns() // 1000) when the frame was read


class FrameSource:
    """An iterable of ``Frame``; ``fps`` is the native rate (None: unknown), ``live`` for cameras."""

    name: str = ""
    fps: float | None = None
    count: int | None = None
    live: bool = False
    size: tuple[int, int] = (0, 0)  # (width, height) of the first frame

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _now_us() -> int:
    return time.time_ns() // 1000


class CaptureSource(FrameSource):
    """A cv2.VideoCapture (webcam or video file), opened and probed for a first frame."""

    def __init__(self, capture: cv2.VideoCapture, name: str, live: bool, limit: int | None = None):
        self.capture, self.name, self.live = capture, name, live
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise DemoError(f"{name}: opened but no frame could be read from it")
        self._first = first
        self.size = (first.shape[1], first.shape[0])
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        self.count = count if count > 0 else None
        if limit is not None:
            self.count = min(self.count, limit) if self.count else limit
        self.limit = limit

    def frames(self) -> Iterator[Frame]:
        index, image = 0, self._first
        while image is not None and (self.limit is None or index < self.limit):
            yield Frame(index, image, _now_us())
            index += 1
            ok, image = self.capture.read()
            if not ok:
                break

    def close(self) -> None:
        self.capture.release()


class FolderSource(FrameSource):
    """Images in name order (a folder of consecutive frames, e.g. CamVid's val/images), or one image."""

    def __init__(self, paths: list[Path], name: str, fps: float | None, limit: int | None = None):
        self.paths = paths[:limit] if limit else paths
        self.name, self.fps, self.count = name, fps, len(self.paths)
        first = cv2.imread(str(self.paths[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise DemoError(f"{self.paths[0]}: not a readable image")
        self.size = (first.shape[1], first.shape[0])

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self.paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise DemoError(f"{path}: not a readable image")
            yield Frame(index, image, _now_us())


def open_source(spec: str, fps: float | None = None, limit: int | None = None) -> FrameSource:
    """``spec``: a webcam index ("0"), a video file, an image folder or an image file.

    Raises DemoError (one line, says what to do) when the source cannot be read.
    """
    if spec.isdigit():
        index = int(spec)
        device = Path(f"/dev/video{index}")
        if Path("/dev").is_dir() and not device.exists():
            raise DemoError(
                f"no webcam at index {index} ({device} does not exist); "
                "give a video file or image folder with --source"
            )
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise DemoError(f"webcam {index} could not be opened (busy, or no permission on {device})")
        return CaptureSource(capture, f"webcam {index}", live=True, limit=limit)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DemoError(f"source not found: {path} (give a webcam index, a video file or an image folder)")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DemoError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return FolderSource(images, str(path), fps or 15.0, limit)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderSource([path], str(path), fps or 1.0, limit)
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DemoError(f"{path}: not a video OpenCV can decode")
    source = CaptureSource(capture, str(path), live=False, limit=limit)
    if fps:
        source.fps = fps
    return source
