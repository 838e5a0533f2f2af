from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from segserve.labels import LabelMap  # noqa: E402
from segserve.train.cli import main  # noqa: E402
from segserve.train.dataset import load_split  # noqa: E402
from segserve.train.export import export_model, labels_json_path, parity  # noqa: E402
from segserve.train.model import ModelConfig, SegNetRT  # noqa: E402

MEAN, STD = (105.0, 108.0, 110.0), (78.0, 79.0, 78.0)


@pytest.fixture(scope="module")
def exported(camvid: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    lm = LabelMap.load(camvid / "classes.json")
    net = SegNetRT(ModelConfig(num_classes=lm.num_classes))
    # a few training-mode passes give the batch norms non-trivial statistics
    with torch.no_grad():
        net.train()
        for _ in range(3):
            net(torch.randn(2, 3, 96, 128) * 2)
    path = tmp_path_factory.mktemp("export") / "m.onnx"
    served = export_model(net, lm, path, MEAN, STD, size=(360, 480), name="test", version="0")
    return path, served, lm


def test_contract(exported) -> None:
    path, _, lm = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)" and inp.shape[1:] == [360, 480, 3]
    assert not isinstance(inp.shape[0], int)  # dynamic batch
    assert out.name == "labels" and out.type == "tensor(uint8)"
    meta = sess.get_modelmeta().custom_metadata_map
    assert LabelMap.from_json(meta["labels"]) == lm
    assert json.loads(meta["mean"]) == list(MEAN) and json.loads(meta["std"]) == list(STD)
    assert json.loads(meta["input_size"]) == [360, 480]
    assert meta["name"] == "test" and meta["version"] == "0"
    assert LabelMap.load(labels_json_path(path)) == lm
    for n in (1, 3):
        labels = sess.run(None, {"images": np.zeros((n, 360, 480, 3), np.uint8)})[0]
        assert labels.shape == (n, 360, 480) and labels.dtype == np.uint8


def test_parity_on_real_frames(exported, camvid: Path) -> None:
    path, served, _ = exported
    frames, _ = load_split(camvid / "train")
    assert parity(served, path, frames) >= 0.999


def test_eval_cli_writes_report(exported, camvid: Path, tmp_path: Path) -> None:
    path, _, _ = exported
    out = tmp_path / "eval"
    assert (
        main(
            [
                "eval",
                "--model",
                str(path),
                "--data",
                str(camvid / "val"),
                "--out",
                str(out),
                "--pictures",
                "2",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == 2 and 0.0 <= report["miou"] <= 1.0
    held = tmp_path / "held"
    args = ["eval", "--model", str(path), "--data", str(camvid / "train"), "--out", str(held)]
    assert main([*args, "--sequences", "0006R0", "--pictures", "0"]) == 0
    report = json.loads((held / "report.json").read_text())
    assert report["frames"] == 2 and report["sequences"] == ["0006R0"]
    assert set(report["per_class_iou"]) == {
        "sky",
        "building",
        "pole",
        "road",
        "sidewalk",
        "tree",
        "sign",
        "fence",
        "car",
        "pedestrian",
        "bicyclist",
    }
    assert (out / "confusion.png").is_file()
    assert len(list(out.glob("sample_*.png"))) == 2
