import pytest
from segserve import providers as prov
from segserve.errors import ModelError

ALL = [prov.TENSORRT, prov.CUDA, prov.CPU]


def test_auto_takes_the_best_present_in_order():
    assert prov.resolve("auto", ALL) == ALL
    assert prov.resolve("auto", [prov.CPU, prov.CUDA]) == [prov.CUDA, prov.CPU]
    assert prov.resolve("auto", [prov.CPU]) == [prov.CPU]


def test_explicit_provider_keeps_cpu_as_last_resort():
    assert prov.resolve("cuda", ALL) == [prov.CUDA, prov.CPU]
    assert prov.resolve("tensorrt,cuda", ALL) == [prov.TENSORRT, prov.CUDA, prov.CPU]


def test_missing_or_unknown_provider_is_a_clear_error():
    with pytest.raises(ModelError, match=r"not in this onnxruntime build.*segserve\[gpu\]"):
        prov.resolve("cuda", [prov.CPU])
    with pytest.raises(ModelError, match="unknown provider 'tpu'"):
        prov.resolve("tpu", ALL)


def test_provider_options(tmp_path):
    settings = prov.ProviderSettings(
        trt_cache_dir=tmp_path, max_batch=8, input_name="images", input_dims=(None, 360, 480, 3)
    )
    trt, cuda, cpu = prov.provider_options(ALL, settings)
    assert trt["trt_fp16_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_profile_min_shapes"] == "images:1x360x480x3"
    assert trt["trt_profile_opt_shapes"] == "images:8x360x480x3"
    assert trt["trt_profile_max_shapes"] == "images:8x360x480x3"
    assert cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cpu == {}


def test_tensorrt_profile_for_a_resizing_graph_names_frames_and_spans_frame_sizes():
    settings = prov.ProviderSettings(max_batch=4, input_name="frames", input_dims=(None, None, None, 3))
    (trt,) = prov.provider_options([prov.TENSORRT], settings)
    assert trt["trt_profile_min_shapes"] == "frames:1x16x16x3"
    assert trt["trt_profile_opt_shapes"] == "frames:4x1080x1920x3"
    assert trt["trt_profile_max_shapes"] == "frames:4x2160x3840x3"


def test_tensorrt_profile_keeps_static_dims_and_is_left_out_when_all_are_static():
    batch_one = prov.ProviderSettings(max_batch=8, input_name="images", input_dims=(1, 360, 480, 3))
    assert prov.profile_shapes(batch_one) is None  # a static engine: a profile would contradict it
    (trt,) = prov.provider_options([prov.TENSORRT], batch_one)
    assert not any(k.startswith("trt_profile") for k in trt)
    one_by_frames = prov.ProviderSettings(max_batch=8, input_name="frames", input_dims=(1, None, None, 3))
    assert prov.profile_shapes(one_by_frames) == (
        "frames:1x16x16x3",
        "frames:1x1080x1920x3",
        "frames:1x2160x3840x3",
    )


def test_the_engine_profiles_its_real_input_name(toy_model):
    from segserve.engine import Engine, EngineConfig

    for resize, name in ((False, "images"), (True, "frames")):
        engine = Engine(EngineConfig(toy_model, resize_in_graph=resize, max_batch=4))
        assert engine.input_name == name == engine.provider_settings.input_name
        shapes = prov.profile_shapes(engine.provider_settings)
        assert shapes is not None and all(s.startswith(f"{name}:") for s in shapes)
        assert shapes[2] == ("frames:4x2160x3840x3" if resize else "images:4x96x128x3")


def test_usable_providers_leave_out_tensorrt_without_its_libraries():
    unusable = {prov.TENSORRT: "libnvinfer.so.10 is not installed"}
    assert prov.resolve("auto", ALL, unusable) == [prov.CUDA, prov.CPU]
    with pytest.raises(ModelError, match=r"'tensorrt' cannot run here: libnvinfer"):
        prov.resolve("tensorrt", ALL, unusable)
    # On this machine (no TensorRT), the probe says so; where TensorRT is installed it is usable.
    reasons = prov.unusable(ALL)
    assert (prov.TENSORRT in reasons) == (prov.tensorrt_libraries() is None)
    assert prov.unusable([prov.CUDA, prov.CPU]) == {}


def test_device_of():
    assert prov.device_of([prov.CUDA, prov.CPU]) == "cuda"
    assert prov.device_of([prov.CPU]) == "cpu"


def test_gpu_only_modules_are_not_imported_at_import_time():
    import subprocess
    import sys

    code = (
        "import sys, segserve.service, segserve.edge.server, segserve.engine, segserve.client; "
        "print([m for m in sys.modules if 'torch' in m or 'tensorrt' in m or 'nvimgcodec' in m])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
