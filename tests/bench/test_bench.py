"""The benchmark harness: the float network cut out of a served model, the naive reference doing the same
work as the pipeline, and a short real run that writes valid JSON, a table and plots."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from frames import jpeg, street_frame
from segserve.bench.core import extract_float_core
from segserve.bench.run import _load_naive
from segserve.cli import main
from segserve.codec import decode_mask_png
from segserve.engine import Engine, EngineConfig
from segserve.graph import prepare_model
from segserve.types import FrameRequest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(toy_model: Path) -> Engine:
    return Engine(EngineConfig(toy_model, intra_op_threads=1))


@pytest.fixture(scope="module")
def core_session(toy_model: Path):
    core = extract_float_core(prepare_model(toy_model).model)
    return core, ort.InferenceSession(core.model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_float_core_gives_the_served_model_labels(engine: Engine, core_session) -> None:
    core, session = core_session
    assert core.pre_ops == ("Cast", "Transpose", "Sub", "Mul")
    h, w = engine.input_hw
    frames = np.stack(
        [cv2.cvtColor(cv2.resize(street_frame(seed=s), (w, h)), cv2.COLOR_BGR2RGB) for s in (1, 2)]
    )
    mean, std = np.asarray(engine.metadata.mean, np.float32), np.asarray(engine.metadata.std, np.float32)
    x = np.ascontiguousarray(((frames.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2))
    logits = session.run(None, {core.input_name: x})[0]
    assert logits.dtype == np.float32 and logits.shape[:2] == (2, len(engine.metadata.labels))
    agree = np.mean(np.argmax(logits, axis=1).astype(np.uint8) == engine.run(frames))
    assert agree > 0.999


def test_naive_reference_does_the_same_work_as_the_pipeline(server, core_session) -> None:
    core, session = core_session
    naive_module = _load_naive(REPO / "benchmarks" / "naive_pipeline.py")
    meta = server.service.engine.metadata
    palette = np.zeros((256, 3), np.uint8)
    for c in meta.labels.classes:
        palette[c.id] = c.color
    naive = naive_module.NaivePipeline(
        session, core.input_name, server.service.engine.input_hw, meta.mean, meta.std, palette
    )
    from segserve.bench.measure import OPTIONS

    data = jpeg(street_frame(seed=3))
    theirs = naive.process(data)
    ours = server.call(server.service.pipeline.process(FrameRequest(encoded=data, options=OPTIONS)))
    assert set(theirs.stages_ms) == set(naive_module.STAGES)
    mask_naive, mask_ours = decode_mask_png(theirs.mask_png), decode_mask_png(ours.mask.data)
    assert mask_naive.shape == mask_ours.shape == (1080, 1920)
    assert np.mean(mask_naive == mask_ours) > 0.995
    overlay_naive = cv2.imdecode(np.frombuffer(theirs.overlay_jpeg, np.uint8), cv2.IMREAD_COLOR)
    overlay_ours = cv2.imdecode(np.frombuffer(ours.overlay.data, np.uint8), cv2.IMREAD_COLOR)
    assert overlay_naive.shape == overlay_ours.shape
    assert np.mean(np.abs(overlay_naive.astype(int) - overlay_ours.astype(int))) < 4


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench_images")
    for i in range(4):
        cv2.imwrite(str(folder / f"f{i}.jpg"), street_frame(480, 360, seed=i))
    return folder


def acceptance_keys() -> set[str]:
    return {
        "a_around_network_speedup",
        "b_segment_rpc_over_inprocess_p50",
        "c_stream4_over_inprocess4_per_frame_cost",
        "d_model_infer_over_segment_p50_1_callers",
        "d_model_infer_over_segment_p50_8_callers",
        "e_outside_server_p50_ms_1_callers",
    }


def test_quick_run_writes_json_table_and_plots(
    toy_model: Path, frames_dir: Path, tmp_path: Path, capsys
) -> None:
    code = main(
        [
            "bench",
            "--model",
            str(toy_model),
            "--quick",
            "--frames",
            "6",
            "--streams",
            "1,2",
            "--max-batch",
            "2",
            "--images",
            str(frames_dir),
            "--naive",
            str(REPO / "benchmarks" / "naive_pipeline.py"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((run_dir / "results.json").read_text())
    meta, layers = results["meta"], results["layers"]
    assert meta["machine"]["cpu_count"] >= 1 and meta["providers_used"][0] == "CPUExecutionProvider"
    assert set(meta["versions"]) >= {"onnxruntime", "grpcio", "numpy", "opencv"}
    assert meta["model"]["input_hw"] == [96, 128]
    assert set(layers["bare_ort"]) == {"1", "2"}
    for name in ("float_network", "inprocess", "naive", "segment_rpc"):
        assert 0 < layers[name]["p50"] <= layers[name]["p95"] <= layers[name]["p99"], name
    for k in ("1", "2"):
        stream = layers["stream"][k]
        assert (
            stream["errors"] == 0 and stream["fps"] > 0 and sum(stream["batch_sizes"].values()) == stream["n"]
        )
        assert layers["inprocess_threads"][k]["per_frame_cost_ms"] > 0
    assert layers["transfers"]["1"]["h2d_bytes_per_frame"] == 96 * 128 * 3
    assert layers["transfers"]["1"]["d2h_bytes_per_frame"] == 96 * 128
    acceptance = results["acceptance"]
    required = acceptance_keys()  # the 8-caller rows come only when 8 callers were measured
    assert required <= set(acceptance) <= required | {"e_outside_server_p50_ms_8_callers"}
    outside = layers["segment_rpc_threads"]["1"]["outside_server_ms"]
    assert outside["n"] > 0 and outside["p50"] > 0  # the client always sees more than the server's total
    assert acceptance["a_around_network_speedup"]["value"] is not None
    assert isinstance(results["ratios"]["to_bare_ort_p50"]["inprocess"], float)
    for png in ("layers.png", "scaling.png"):
        assert cv2.imread(str(run_dir / png)) is not None
    table = (run_dir / "table.md").read_text()
    assert "StreamSegment, 1080p, 2 streams" in table and "naive numpy reference" in table
    assert "bare ORT, batch 1" in capsys.readouterr().out


def test_missing_model_is_one_line(tmp_path: Path, capsys) -> None:
    code = main(["bench", "--model", str(tmp_path / "none.onnx"), "--images", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--model: no such file" in err[0] and "none.onnx" in err[0]
