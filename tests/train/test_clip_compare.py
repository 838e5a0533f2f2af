from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("onnxruntime")

from segserve.settings import default_model_path  # noqa: E402
from segserve.train.clip_compare import ClipModel, class_id, compare, main  # noqa: E402


def _clip(path: Path, frames: int = 12) -> Path:
    """A small real video file: blue sky over a grey road."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            rgb = np.zeros((240, 320, 3), np.uint8)
            rgb[:100] = (90, 150, 230)
            rgb[100:] = (100 + i, 100, 100)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_compare_reports_top_band_shares_and_draws_the_frames(tmp_path: Path) -> None:
    video = _clip(tmp_path / "clip.mp4")
    shipped = default_model_path()
    models = [ClipModel("a", shipped), ClipModel("b", shipped)]
    report = compare(models, video, tmp_path / "out")
    assert report["frames"] == 12 and len(report["picture_frames"]) == 3
    a, b = report["models"]["a"], report["models"]["b"]
    assert a == {**b, "path": a["path"]}  # the same model gives the same figures
    assert 0.0 <= a["top_band_sky_share"] <= 1.0
    assert a["top_band_sky_share"] == pytest.approx(a["top_band_shares"].get("sky", 0.0), abs=1e-3)
    assert sum(a["top_band_shares"].values()) == pytest.approx(1.0, abs=1e-3)
    picture = cv2.imread(str(tmp_path / "out" / "demo_compare.png"))
    assert picture.shape[1] == 3 * 320 and picture.shape[0] > 3 * 240
    assert json.loads((tmp_path / "out" / "demo_sky.json").read_text())["frames"] == 12
    with pytest.raises(ValueError, match="no class named"):
        class_id(models[0].labels, "ocean")


def test_cli_refuses_a_missing_model_in_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--model", f"v2={tmp_path / 'none.onnx'}", "--video", str(tmp_path / "none.mp4")])
    assert exc.value.code == 2
    assert "expected NAME=PATH of an ONNX file" in capsys.readouterr().err
