import numpy as np
import onnx
import pytest
from modelgen import byo_model, float_logits_model
from segserve.engine import Engine, EngineConfig, session_options


@pytest.fixture
def frames():
    return np.random.default_rng(2).integers(0, 256, (5, 96, 128, 3), dtype=np.uint8)


def test_run_returns_uint8_ids_and_batches_equal_singles(toy_model, frames):
    engine = Engine(EngineConfig(toy_model, max_batch=4))
    assert engine.providers[-1] == "CPUExecutionProvider"
    batch = engine.run(frames)  # 5 > max_batch: split into 4 + 1
    assert batch.dtype == np.uint8 and batch.shape == (5, 96, 128)
    singles = np.concatenate([engine.run(frames[i : i + 1]) for i in range(5)])
    assert np.array_equal(batch, singles)


def test_io_binding_path_reuses_buffers_and_matches(toy_model, frames):
    plain = Engine(EngineConfig(toy_model, io_binding=False))
    bound = Engine(EngineConfig(toy_model, io_binding=True))
    first = bound.run(frames[:2])
    buffers = bound.buffers_for((2, 96, 128, 3))
    assert np.array_equal(first, plain.run(frames[:2]))
    second = bound.run(frames[2:4])
    assert bound.buffers_for((2, 96, 128, 3)) is buffers  # no new allocation for a batch size seen before
    assert np.array_equal(second, plain.run(frames[2:4]))
    assert buffers.input.shape() == [2, 96, 128, 3] and buffers.output.shape() == [2, 96, 128]


def test_static_batch_one_model_is_run_frame_by_frame(tmp_path, frames):
    path = tmp_path / "static.onnx"
    onnx.save(float_logits_model(height=96, width=128, batch=1), str(path))
    engine = Engine(EngineConfig(path, max_batch=8))
    assert engine.max_batch == 1 and not engine.metadata.dynamic_batch
    assert engine.metadata.static_batch == 1
    assert engine.run(frames).shape == (5, 96, 128)


def test_static_batch_four_pads_short_batches_and_drops_the_padding(tmp_path, frames):
    static, dynamic = tmp_path / "static4.onnx", tmp_path / "dynamic.onnx"
    onnx.save(byo_model(height=96, width=128, batch=4), str(static))
    onnx.save(byo_model(height=96, width=128), str(dynamic))
    engine, reference = Engine(EngineConfig(static, max_batch=8)), Engine(EngineConfig(dynamic))
    assert engine.max_batch == 4 and engine.metadata.static_batch == 4
    start = engine.stats.calls, engine.stats.padding
    three = engine.run(frames[:3])
    assert (engine.stats.calls - start[0], engine.stats.padding - start[1]) == (1, 1)
    assert np.array_equal(three, reference.run(frames[:3]))
    five = engine.run(frames)  # 4 + (1 padded to 4)
    assert (engine.stats.calls - start[0], engine.stats.padding - start[1]) == (3, 4)
    assert np.array_equal(five, reference.run(frames))


def test_warm_up_of_a_static_model_runs_its_one_batch_size(tmp_path):
    path = tmp_path / "static4.onnx"
    onnx.save(byo_model(batch=4), str(path))
    engine = Engine(EngineConfig(path))
    engine.warm_up()
    assert (engine.stats.calls, engine.stats.frames, engine.stats.padding) == (1, 4, 0)


def test_model_flags_reach_the_model_through_the_config(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(byo_model(aux=True, num_classes=19), str(path))
    config = EngineConfig(path, output="logits", channel_order="bgr", input_range="0..1", labels="cityscapes")
    meta = Engine(config).metadata
    assert (meta.output_name, meta.channel_order, meta.input_range) == ("logits", "bgr", "0..1")
    assert meta.labels.names[0] == "road" and meta.label_source == "flag --labels (built-in cityscapes)"


def test_wrong_shape_is_refused(toy_model):
    engine = Engine(EngineConfig(toy_model))
    with pytest.raises(ValueError, match=r"expects uint8 \[N, 96, 128, 3\]"):
        engine.run(np.zeros((1, 10, 10, 3), np.uint8))


def test_resize_in_graph_takes_bgr_frames_of_any_size(toy_model):
    import cv2

    outside = Engine(EngineConfig(toy_model))
    inside = Engine(EngineConfig(toy_model, resize_in_graph=True))
    frame = np.random.default_rng(3).integers(0, 256, (1, 300, 400, 3), dtype=np.uint8)
    rgb = cv2.cvtColor(cv2.resize(frame[0], (128, 96), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    assert inside.run(frame).shape == (1, 96, 128)
    # Same resize kernel up to rounding: masks agree on almost every pixel.
    assert np.mean(inside.run(frame) == outside.run(rgb[None])) > 0.97


def test_auto_falls_back_when_a_gpu_provider_fails_to_start(toy_model, monkeypatch):
    from segserve import engine as engine_module
    from segserve import providers as prov

    real = engine_module._session
    monkeypatch.setattr(engine_module.ort, "get_available_providers", lambda: [prov.CUDA, prov.CPU])

    def fake_session(model_bytes, options, providers, provider_options):
        if providers[0] == prov.CUDA:
            raise RuntimeError("libcudart.so: cannot open shared object file")
        return real(model_bytes, options, providers, provider_options)

    monkeypatch.setattr(engine_module, "_session", fake_session)
    engine = Engine(EngineConfig(toy_model, providers="auto"))
    assert engine.providers == [prov.CPU] and engine.device == "cpu" and not engine.io_binding


def test_spinning_is_off_by_default_and_can_be_turned_on():
    quiet = session_options(2)
    assert quiet.intra_op_num_threads == 2
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    busy = session_options(spinning=True)
    with pytest.raises(Exception, match="allow_spinning"):  # never set: onnxruntime's default (on)
        busy.get_session_config_entry("session.intra_op.allow_spinning")


def test_engine_with_spinning_on_gives_the_same_ids(toy_model, frames):
    batch = frames[:2]
    quiet = Engine(EngineConfig(model=toy_model)).run(batch)
    busy = Engine(EngineConfig(model=toy_model, spinning=True)).run(batch)
    np.testing.assert_array_equal(quiet, busy)
