"""``segserve inspect``: what the server would do with a model, where each value came from, one run;
exit 1 with the reason (never a traceback) when the model cannot be served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from modelgen import byo_model
from segserve import options as o
from segserve.cli import build_parser, main
from segserve.cli_errors import explain
from segserve.options import UsageError
from segserve.settings import ServeSettings


def _save(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    onnx.save(model, str(path))
    return path


def test_inspect_prints_the_form_the_sources_and_one_run(tmp_path: Path, capsys) -> None:
    path = _save(byo_model(num_classes=19, stride=4, metadata={"mean": "[72.39, 82.91, 73.16]"}), tmp_path)
    flags = ["--channel-order", "bgr", "--input-range", "0..1", "--std", "45.3,46.2,44.9"]
    code = main(["inspect", str(path), *flags, "--labels", "cityscapes"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "input    'input' float32 [N, 3, 48, 64]" in out
    assert "NCHW" in out and "(model shape)" in out
    assert "BGR" in out and "(flag --channel-order)" in out
    assert "0..1" in out and "(flag --input-range)" in out
    assert "72.39 82.91 73.16" in out and "(metadata 'mean')" in out
    assert "45.3 46.2 44.9" in out and "(flag --std)" in out
    assert "* 'logits' float32 [N, 19, 12, 16]: class scores NCHW, 19 classes, resized (linear)" in out
    assert "19 classes (flag --labels (built-in cityscapes))" in out
    assert "batch    dynamic: batches of up to 8" in out
    assert "ran once synthetic 64x48" in out and "segserve can serve this model" in out


def test_inspect_of_a_static_batch_ids_model_on_a_given_frame(tmp_path: Path, capsys) -> None:
    path = _save(byo_model(batch=4, output="ids32"), tmp_path)
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.full((120, 160, 3), 90, np.uint8))
    assert main(["inspect", str(path), "--frame", str(frame), "--max-batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "static 4" in out and "batches of up to 4, padded to 4" in out
    assert "'ids' int32 [4, 1, 48, 64]: class ids, at the input size" in out
    assert f"ran once {frame} (160x120)" in out and "mask 64x48" in out


@pytest.mark.parametrize(
    ("model", "flags", "reason"),
    [
        (
            byo_model(aux=True),
            [],
            "2 outputs could be the mask ('aux', 'logits'): choose one with --output NAME",
        ),
        (byo_model(), ["--output", "aux"], "names 'aux', which the model does not output"),
        (byo_model(), ["--mean", "0.5,0.5,0.5"], "give --input-range 0..1"),
        (byo_model(), ["--input-size", "10x10"], "disagrees with the model's static input height 48"),
    ],
)
def test_inspect_exits_1_with_the_reason(tmp_path: Path, capsys, model, flags, reason) -> None:
    path = _save(model, tmp_path)
    assert main(["inspect", str(path), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cannot serve {path}: ") and reason in err


def test_inspect_of_a_malformed_label_map_exits_1(tmp_path: Path, capsys) -> None:
    path = _save(byo_model(), tmp_path)
    labels = tmp_path / "labels.json"
    labels.write_text("{not json")
    assert main(["inspect", str(path), "--labels", str(labels)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cannot serve {path}: ") and "is not valid JSON" in err


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--labels", "nope"], ("--labels", "label-map file or one of cityscapes", "'nope'")),
        (["--channel-order", "rbg"], ("--channel-order", "rgb, bgr", "'rbg'")),
        (["--input-range", "0..100"], ("--input-range", "0..1, 0..255")),
        (["--layout", "chw"], ("--layout", "nchw, nhwc")),
        (["--mean", "1,2"], ("--mean", "three numbers")),
        (["--std", "1,0,1"], ("--std must be above 0",)),
        (["--input-size", "48"], ("--input-size", "WxH")),
        (["--max-batch", "0"], ("--max-batch", "at least 1")),
    ],
)
def test_bad_model_flags_are_one_line_usage_errors_as_for_serve(
    tmp_path: Path, capsys, flags: list[str], words: tuple[str, ...]
) -> None:
    """inspect takes serve's own option definitions, so the same values fail the same way."""
    path = _save(byo_model(), tmp_path)
    assert main(["inspect", str(path), *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    # serve's settings (parsed as main does, without starting a server) refuse them with the same words
    with pytest.raises(UsageError) as refused:
        ServeSettings.from_args(o.resolve_env(build_parser().parse_args(["serve", *flags])))
    failure = explain(refused.value)
    assert failure.code == 2 and all(word in failure.message for word in words), failure.message


def test_inspect_reads_the_model_flags_from_serves_variables(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(byo_model(), tmp_path)
    monkeypatch.setenv("SEGSERVE_CHANNEL_ORDER", "bgr")
    monkeypatch.setenv("SEGSERVE_INPUT_RANGE", "0..1")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "BGR" in out and "(flag --channel-order)" in out and "(flag --input-range)" in out
    monkeypatch.setenv("SEGSERVE_LAYOUT", "sideways")
    assert main(["inspect", str(path)]) == 2
    assert "SEGSERVE_LAYOUT='sideways'" in capsys.readouterr().err


def test_inspect_never_shows_a_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    for args, code in (
        ([str(junk)], 1),
        ([str(tmp_path / "missing.onnx")], 1),
        ([str(junk), "--mean", "1,2"], 2),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "segserve", "inspect", *args], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == code and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert ("cannot serve" if code == 1 else "error: ") in run.stderr
