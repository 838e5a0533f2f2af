"""Every model form people export, served by a real server and compared with the same network run by
hand: onnxruntime on the untouched file, the authors' own normalisation formula and numpy argmax.

The frames are sent at the model's size, so the served mask is the model's mask, pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from frames import street_frame
from modelgen import byo_model
from onnx import TensorProto
from segserve.client import SegmenterClient
from servers import start_server

H, W = 48, 64
IMAGENET_MEAN_RGB = np.array([123.675, 116.28, 103.53], np.float32)
IMAGENET_STD_RGB = np.array([58.395, 57.12, 57.375], np.float32)
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)
ESPNET_MEAN_BGR = np.array([72.3923, 82.9088, 73.1584], np.float32)  # as ESPNet publishes them
ESPNET_STD_BGR = np.array([45.3192, 46.1529, 44.9148], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def imagenet(p: np.ndarray) -> np.ndarray:
    return (p - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB


@dataclass(frozen=True)
class Form:
    name: str
    model: dict  # byo_model keywords
    engine: dict  # EngineConfig fields: what the serve flags set
    normalise: Callable[[np.ndarray], np.ndarray]  # the authors' formula on float pixels in `order`
    order: str = "rgb"
    output: str = "logits"
    server: dict = field(default_factory=dict)


FORMS = [
    Form(
        "rgb-torchvision-0..1",
        {},
        {"input_range": "0..1", "mean": tuple(TORCHVISION_MEAN), "std": tuple(TORCHVISION_STD)},
        lambda p: (p / 255 - TORCHVISION_MEAN) / TORCHVISION_STD,
    ),
    Form(
        "bgr-espnet-flags",
        {"gain": 255.0},
        {
            "channel_order": "bgr",
            "input_range": "0..1",
            "mean": tuple(ESPNET_MEAN_BGR),
            "std": tuple(ESPNET_STD_BGR),
        },
        lambda p: (p - ESPNET_MEAN_BGR) / ESPNET_STD_BGR / 255,
        order="bgr",
    ),
    Form(
        "bgr-caffe-metadata",
        {"metadata": {"channel_order": "bgr", "mean": "[103.939, 116.779, 123.68]", "std": "[1, 1, 1]"}},
        {},
        lambda p: p - CAFFE_MEAN_BGR,
        order="bgr",
    ),
    Form("ids-int64-nhw", {"output": "ids64"}, {}, imagenet, output="ids"),
    Form("ids-int32-n1hw", {"output": "ids32"}, {}, imagenet, output="ids"),
    Form("ids-int32-quarter-res", {"output": "ids32", "stride": 4}, {}, imagenet, output="ids"),
    Form("float16", {"elem_type": TensorProto.FLOAT16}, {}, imagenet),
    Form("two-outputs", {"aux": True}, {"output": "logits"}, imagenet),
    Form("logits-quarter-res", {"stride": 4, "num_classes": 19}, {"labels": "cityscapes"}, imagenet),
    Form("nhwc", {"layout": "nhwc"}, {}, imagenet),
    Form(
        "uint8-nhwc-bgr",
        {"elem_type": TensorProto.UINT8, "layout": "nhwc"},
        {"channel_order": "bgr"},
        lambda p: p,
        order="bgr",
    ),
    Form("static-batch-1", {"batch": 1}, {}, imagenet),
    Form("static-batch-4", {"batch": 4}, {}, imagenet),
]


def frames(n: int = 6) -> list[np.ndarray]:
    """Street-like frames and noise: both give every class a share of pixels."""
    street = [street_frame(W, H, seed=s) for s in range(n // 2)]
    rng = np.random.default_rng(7)
    return street + [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n - n // 2)]


def by_hand(path: Path, form: Form, bgr_frames: list[np.ndarray], order: str | None = None) -> np.ndarray:
    """The masks the network gives when run the plain way, [n, H, W] uint8."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    pixels = np.stack(bgr_frames).astype(np.float32)
    if (order or form.order) == "rgb":
        pixels = pixels[..., ::-1]
    x = form.normalise(pixels)
    nhwc = form.model.get("layout") == "nhwc"
    if not nhwc:
        x = x.transpose(0, 3, 1, 2)
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}[inp.type]
    x = np.ascontiguousarray(x.astype(dtype))
    step = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    parts = []
    for start in range(0, len(x), step):  # a static batch takes exactly `step` frames: pad, then drop
        chunk = x[start : start + step]
        padded = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), dtype)])
        parts.append(session.run([form.output], {inp.name: padded})[0][: len(chunk)])
    y = np.concatenate(parts)
    if form.output == "ids":
        ids = y.reshape(len(y), y.shape[-2], y.shape[-1]).astype(np.uint8)
        return np.stack([cv2.resize(i, (W, H), interpolation=cv2.INTER_NEAREST) for i in ids])
    scores = y.astype(np.float32) if nhwc else y.astype(np.float32).transpose(0, 2, 3, 1)
    if scores.shape[1:3] != (H, W):
        scores = np.stack([cv2.resize(s, (W, H), interpolation=cv2.INTER_LINEAR) for s in scores])
    return scores.argmax(-1).astype(np.uint8)


def save(form: Form, folder: Path) -> Path:
    path = folder / f"{form.name}.onnx"
    onnx.save(byo_model(**form.model), str(path))
    return path


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_served_masks_match_the_network_run_by_hand(form: Form, tmp_path: Path) -> None:
    path = save(form, tmp_path)
    sent = frames()
    expected = by_hand(path, form, sent)
    running = start_server(path, engine=form.engine)
    try:
        with SegmenterClient(f"127.0.0.1:{running.port}") as client:
            info = client.model_info()
            results = [client.segment(frame) for frame in sent]
    finally:
        running.drain_and_stop(1.0)
    masks = np.stack([r.mask for r in results])
    assert masks.shape == expected.shape
    assert np.mean(masks == expected) >= 0.999
    assert len(np.unique(expected)) >= 3  # a mask of one class would agree with anything
    assert [r.timing.batch_size for r in results] == [1] * len(sent)  # one at a time, each ran alone
    assert info.input_size == (W, H)
    static = form.model.get("batch")
    assert info.dynamic_batch == (static is None)
    if form.order == "bgr" or form.name.startswith("rgb"):
        # The comparison has teeth: the other channel order gives a different mask.
        swapped = by_hand(path, form, sent, order="rgb" if form.order == "bgr" else "bgr")
        assert np.mean(masks == swapped) < 0.9


def test_cityscapes_labels_reach_get_model_info(tmp_path: Path) -> None:
    form = next(f for f in FORMS if f.name == "logits-quarter-res")
    running = start_server(save(form, tmp_path), engine=form.engine)
    try:
        with SegmenterClient(f"127.0.0.1:{running.port}") as client:
            labels = client.model_info().labels
    finally:
        running.drain_and_stop(1.0)
    assert len(labels) == 19 and labels.names[0] == "road" and labels.names[18] == "bicycle"
    assert labels.classes[13].color == (0, 0, 142)


@pytest.mark.parametrize("static", [None, 1, 4], ids=["dynamic", "static-1", "static-4"])
def test_concurrent_frames_report_the_batches_that_really_ran(static: int | None, tmp_path: Path) -> None:
    """Each batch of b frames is one session call and each of its frames says b, so the sum over all
    frames of 1/b is the number of calls; a static size is never exceeded and short batches are padded."""
    form = Form(f"batch-{static}", {"batch": static or "N"}, {}, imagenet)
    path = save(form, tmp_path)
    sent = frames(10)  # not a multiple of 4: at least one batch of a static-4 model is padded
    expected = by_hand(path, form, sent)
    running = start_server(path, max_batch=8, max_delay_ms=20.0)
    engine = running.service.engine
    before = dataclasses.replace(engine.stats)
    barrier = threading.Barrier(len(sent))

    def one(i: int):
        barrier.wait()
        return client.segment(sent[i])

    try:
        with SegmenterClient(f"127.0.0.1:{running.port}") as client, ThreadPoolExecutor(len(sent)) as pool:
            results = list(pool.map(one, range(len(sent))))
            info = client.model_info()
    finally:
        running.drain_and_stop(1.0)
    sizes = [r.timing.batch_size for r in results]
    calls = engine.stats.calls - before.calls
    assert info.max_batch == (static or 8) and info.dynamic_batch == (static is None)
    assert min(sizes) >= 1 and max(sizes) <= (static or 8)
    assert sum(1 / b for b in sizes) == pytest.approx(calls)
    assert engine.stats.frames - before.frames == len(sent)
    padding = engine.stats.padding - before.padding
    if static:
        assert padding == calls * static - len(sent)
    assert padding > 0 if static == 4 else padding == 0
    assert np.mean(np.stack([r.mask for r in results]) == expected) >= 0.999
