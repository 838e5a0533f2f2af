"""The engine on a real GPU: CUDA and TensorRT serve the shipped model as the CPU does, IO binding
reuses its device buffers, CUDA graphs replay new inputs, and the bindings stay bounded when the graph
resizes frames of any size."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
from segserve import providers as prov
from segserve.engine import GRAPH_FRAME_SIZES, Engine, EngineConfig

pytestmark = pytest.mark.gpu

AGREE = 0.995  # masks equal to the CPU's on at least this share of pixels


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.mean(a == b))


def model_rgb(frames_bgr: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.cvtColor(cv2.resize(f, hw[::-1]), cv2.COLOR_BGR2RGB) for f in frames_bgr])


def gpu_providers() -> list[str]:
    names = ["cuda"]
    import onnxruntime as ort

    available = ort.get_available_providers()
    if prov.TENSORRT in available and not prov.unusable(available):
        names.append("tensorrt")
    return names


@pytest.fixture(scope="module")
def cpu_engine(shipped_model):
    return Engine(EngineConfig(shipped_model, providers="cpu"))


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_serves_the_shipped_model_like_the_cpu(provider, shipped_model, cpu_engine, camvid_bgr):
    if provider not in gpu_providers():
        pytest.skip(f"TensorRT cannot run here: {prov.unusable([prov.TENSORRT]).get(prov.TENSORRT)}")
    engine = Engine(EngineConfig(shipped_model, providers=provider, max_batch=4))
    assert engine.providers[0] == prov.ALIASES[provider] and engine.device == "cuda"
    assert engine.io_binding  # on by default on a GPU
    batch = model_rgb(camvid_bgr[:4], engine.input_hw)
    assert agreement(engine.run(batch), cpu_engine.run(batch)) >= AGREE
    single = np.concatenate([engine.run(batch[i : i + 1]) for i in range(len(batch))])
    assert agreement(single, cpu_engine.run(batch)) >= AGREE


def test_io_binding_reuses_device_buffers(shipped_model, camvid_bgr):
    bound = Engine(EngineConfig(shipped_model, providers="cuda", io_binding=True, max_batch=4))
    unbound = Engine(EngineConfig(shipped_model, providers="cuda", io_binding=False, max_batch=4))
    frames = model_rgb(camvid_bgr, bound.input_hw)
    for n in (1, 2, 4):
        first = bound.run(frames[:n])
        buffers = bound.buffers_for((n, *bound.input_hw, 3))
        devices = {buffers.input.device_name().lower(), buffers.output.device_name().lower()}
        assert devices == {"cuda"}
        kept = first.copy()
        second = bound.run(frames[n : 2 * n] if len(frames) >= 2 * n else frames[:n][::-1])
        assert bound.buffers_for((n, *bound.input_hw, 3)) is buffers  # no new allocation
        assert np.array_equal(first, kept)  # the next run did not overwrite the earlier answer
        assert buffers.output.numpy().flags.owndata  # a fresh host array: fetch() copies nothing more
        assert agreement(first, unbound.run(frames[:n])) >= 0.999
        assert second.shape == first.shape
    assert bound.binding_count == 3


def test_cuda_graphs_replay_new_inputs(shipped_model, cpu_engine, camvid_bgr):
    graphs = Engine(EngineConfig(shipped_model, providers="cuda", cuda_graph=True, max_batch=2))
    assert graphs.cuda_graph
    a = model_rgb(camvid_bgr[:2], graphs.input_hw)
    b = model_rgb(camvid_bgr[2:4], graphs.input_hw)
    for n in (1, 2):
        results = [graphs.run(x[:n]) for x in (a, b, a, b, a)]  # capture, then replays
        assert graphs.buffers_for(a[:n].shape).graph_id is not None
        assert agreement(results[-1], cpu_engine.run(a[:n])) >= AGREE
        assert agreement(results[-2], cpu_engine.run(b[:n])) >= AGREE  # a replay saw the new input
        assert np.array_equal(results[0], results[2]) and np.array_equal(results[2], results[4])


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_resize_in_graph_on_cuda_keeps_bindings_bounded(shipped_model, camvid_bgr, cuda_graph):
    config = EngineConfig(shipped_model, providers="cuda", resize_in_graph=True, max_batch=2)
    engine = Engine(dataclasses.replace(config, cuda_graph=cuda_graph))
    cpu = Engine(EngineConfig(shipped_model, providers="cpu", resize_in_graph=True))
    sizes = [(1080, 1920), (720, 1280), (360, 480), (600, 800), (1080, 1920)]
    for h, w in sizes:
        frames = np.stack([cv2.resize(f, (w, h)) for f in camvid_bgr[:2]])
        for n in (1, 2):
            assert agreement(engine.run(frames[:n]), cpu.run(frames[:n])) >= AGREE
    bound = 2 * (GRAPH_FRAME_SIZES + 1) if cuda_graph else 2
    assert engine.binding_count <= bound


def test_tensorrt_profiles_the_frames_input_of_a_resizing_graph(shipped_model, camvid_bgr):
    if "tensorrt" not in gpu_providers():
        pytest.skip(f"TensorRT cannot run here: {prov.unusable([prov.TENSORRT]).get(prov.TENSORRT)}")
    engine = Engine(EngineConfig(shipped_model, providers="tensorrt", resize_in_graph=True, max_batch=2))
    assert engine.input_name == "frames" and engine.providers[0] == prov.TENSORRT
    cpu = Engine(EngineConfig(shipped_model, providers="cpu", resize_in_graph=True))
    frames = np.stack([cv2.resize(f, (1920, 1080)) for f in camvid_bgr[:2]])
    assert agreement(engine.run(frames), cpu.run(frames)) >= AGREE
    with pytest.raises(ValueError, match="outside the TensorRT profile"):
        engine.run(np.zeros((1, 4320, 7680, 3), np.uint8))
