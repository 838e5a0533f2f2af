"""GPU tests: collected everywhere, run only where onnxruntime-gpu finds a CUDA device (`make gpu-check`
on the GPU machine); elsewhere each is skipped with the reason."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CAMVID = sorted((ROOT / "tests" / "fixtures" / "camvid").glob("*/images/*.jpg"))


@functools.cache
def cuda_missing() -> str | None:
    """Why the CUDA provider cannot run here, or None when it can."""
    import onnxruntime as ort
    from segserve import providers as prov

    if prov.CUDA not in ort.get_available_providers():
        return f"no CUDA provider in onnxruntime {ort.__version__} (the CPU build is installed)"
    with contextlib.suppress(AttributeError, OSError):
        ort.preload_dlls()  # CUDA and cuDNN from pip's nvidia packages (PyTorch's), where they are
    try:
        ort.OrtValue.ortvalue_from_shape_and_type([1], np.uint8, "cuda", 0)
    except Exception as exc:
        return f"no usable CUDA device: {str(exc).splitlines()[0]}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _needs_cuda():
    """Session-scoped so that it runs before any fixture that would open a CUDA session."""
    reason = cuda_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    from segserve.settings import SHIPPED_MODEL

    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def camvid_bgr() -> list[np.ndarray]:
    assert CAMVID, "the CamVid fixture frames are missing"
    return [cv2.imread(str(p)) for p in CAMVID]


@pytest.fixture(scope="session")
def jpegs_1080p(camvid_bgr) -> list[bytes]:
    """Real frames at 1920x1080 as JPEG q90: what cameras send."""
    return [
        cv2.imencode(".jpg", cv2.resize(f, (1920, 1080)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        for f in camvid_bgr
    ]
