"""GetModelInfo reports the model's form as the server read it (channel order, input range, mean/std,
layout, the mask's output, the label map's source), and ``segserve info`` shows it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from modelgen import byo_model
from onnx import TensorProto
from segserve.client import SegmenterClient
from servers import start_server

ESPNET_MEAN_BGR = (72.3923, 82.9088, 73.1584)
ESPNET_STD_BGR = (45.3192, 46.1529, 44.9148)


def _info(model: onnx.ModelProto, folder: Path, engine: dict):
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    running = start_server(path, engine=engine)
    try:
        with SegmenterClient(f"127.0.0.1:{running.port}") as client:
            info = client.model_info()
        cli = subprocess.run(
            [sys.executable, "-m", "segserve", "info", "--server", f"127.0.0.1:{running.port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        running.drain_and_stop(1.0)
    assert cli.returncode == 0, cli.stderr
    return info, cli.stdout


def test_a_bgr_0_255_model_flagged_so_reports_its_form(tmp_path: Path) -> None:
    engine = {
        "channel_order": "bgr",
        "input_range": "0..255",
        "mean": ESPNET_MEAN_BGR,
        "std": ESPNET_STD_BGR,
        "output": "logits",
        "labels": "cityscapes",
    }
    info, out = _info(byo_model(num_classes=19, stride=4, aux=True), tmp_path, engine)
    assert (info.channel_order, info.input_range) == ("bgr", "0..255")
    assert info.mean == pytest.approx(ESPNET_MEAN_BGR) and info.std == pytest.approx(ESPNET_STD_BGR)
    assert (info.input_layout, info.input_type, info.static_batch) == ("nchw", "float32", None)
    assert (info.output_name, info.output_kind, info.wrapped) == ("logits", "scores", True)
    assert info.label_source == "flag --labels (built-in cityscapes)" and len(info.labels) == 19
    assert "channels BGR" in out and "input range 0..255" in out and "mean 72.3923,82.9088,73.1584" in out
    assert "mask from 'logits' (scores)" in out


def test_a_model_read_from_its_metadata_reports_rgb_0_1(tmp_path: Path) -> None:
    model = byo_model(metadata={"input_range": "0..1", "mean": "[0.485, 0.456, 0.406]"}, batch=2)
    info, out = _info(model, tmp_path, {})
    assert (info.channel_order, info.input_range, info.static_batch) == ("rgb", "0..1", 2)
    assert info.mean == pytest.approx((0.485, 0.456, 0.406))
    assert "channels RGB" in out and "input range 0..1" in out and "static batch 2" in out


def test_a_uint8_model_reports_no_input_range(tmp_path: Path) -> None:
    info, out = _info(byo_model(elem_type=TensorProto.UINT8, layout="nhwc"), tmp_path, {})
    assert (info.input_type, info.input_range, info.input_layout) == ("uint8", "", "nhwc")
    assert "the model normalises them" in out
