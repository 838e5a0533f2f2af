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
    settings = prov.ProviderSettings(trt_cache_dir=tmp_path, max_batch=8, input_hw=(360, 480))
    trt, cuda, cpu = prov.provider_options(ALL, settings)
    assert trt["trt_fp16_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_profile_max_shapes"] == "images:8x360x480x3"
    assert trt["trt_profile_min_shapes"] == "images:1x360x480x3"
    assert cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cpu == {}


def test_device_of():
    assert prov.device_of([prov.CUDA, prov.CPU]) == "cuda"
    assert prov.device_of([prov.CPU]) == "cpu"


def test_gpu_only_modules_are_not_imported_at_import_time():
    import subprocess
    import sys

    code = (
        "import sys, segserve.server, segserve.engine, segserve.client; "
        "print([m for m in sys.modules if 'torch' in m or 'tensorrt' in m])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
