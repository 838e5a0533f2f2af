"""Shared helpers for tests/reliability: requests, percentiles, a `segserve serve` subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
SEGSERVE = Path(sys.executable).with_name("segserve")

DOCUMENTED_FRAME_CODES = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}


def frame(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (200, 160, 120)
    image[height // 2 :] = (90, 90, 90)
    return cv2.add(image, rng.integers(0, 30, image.shape, dtype=np.uint8))


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def raw_request(frame_id: str, image: np.ndarray, policy: int | None = None, **outputs) -> pb.SegmentRequest:
    height, width = image.shape[:2]
    msg = pb.SegmentRequest(
        frame_id=frame_id,
        raw=pb.RawImage(width=width, height=height, format=pb.PIXEL_FORMAT_BGR8, data=image.tobytes()),
        outputs=pb.OutputOptions(mask=outputs.pop("mask", pb.MASK_ENCODING_RAW), **outputs),
    )
    if policy is not None:
        msg.stream_policy = policy
    return msg


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if values else float("nan")


class ServeProcess:
    """`segserve serve` in a subprocess; ``address`` once it printed its listening line."""

    def __init__(
        self, model: Path, *args: str, log_path: Path, env: dict | None = None, timeout: float = 60.0
    ):
        cmd = [str(SEGSERVE), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0", *args]
        self.log_path = Path(log_path)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = ""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if line.startswith("segserve listening on") or (not line and self.proc.poll() is not None):
                break
        match = re.search(r"listening on (\S+):(\d+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.log_path.read_text()}")
        self.port = int(match.group(2))
        self.address = f"127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.log_path.read_text()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig or 15)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._log.close()
        return self.proc.returncode

    def json_logs(self) -> list[dict]:
        entries = []
        for line in self.stderr.splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries
