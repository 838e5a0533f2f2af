"""Execution-provider choice: what the user asked for, what this onnxruntime build has and can run
here, and the options each provider runs with. Pure functions over names and shapes (plus one probe
for the TensorRT libraries), so they are tested without a GPU."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from segserve.errors import ModelError

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}

# onnxruntime-gpu's TensorRT provider links libnvinfer of TensorRT 10; the pip wheels
# (tensorrt-cu13-libs) put it in the `tensorrt_libs` package folder rather than on the loader's path.
NVINFER = ("libnvinfer.so.10",)

# Frame sizes a TensorRT profile covers when the graph resizes (input `frames`, dynamic height and
# width): min, opt (1080p, the cameras' usual size), max (4K UHD). Larger frames are refused on TensorRT.
FRAME_HW_MIN = (16, 16)
FRAME_HW_OPT = (1080, 1920)
FRAME_HW_MAX = (2160, 3840)


@dataclass(frozen=True)
class ProviderSettings:
    """Knobs for the GPU providers; ignored on CPU.

    ``input_name`` and ``input_dims`` describe the graph's real input (``images`` [N, H, W, 3], or
    ``frames`` [N, h, w, 3] with dynamic h and w when the graph resizes): None for a dynamic dim.
    """

    device_id: int = 0
    trt_fp16: bool = True
    trt_cache_dir: Path = Path.home() / ".cache" / "segserve" / "trt"
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # shapes are fixed per batch size, so the search pays
    max_batch: int = 8
    input_name: str = ""
    input_dims: tuple[int | None, ...] = ()
    frame_hw_range: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = (
        FRAME_HW_MIN,
        FRAME_HW_OPT,
        FRAME_HW_MAX,
    )
    cuda_graph: bool = False  # needs IO binding with fixed buffers: one graph per batch size
    extra: dict[str, dict[str, str]] = field(default_factory=dict)


def tensorrt_libraries() -> str | None:
    """Load TensorRT's libnvinfer if it is on the loader's path or pip-installed; where from, or None.

    onnxruntime-gpu lists the TensorRT provider whether or not TensorRT is installed; this says whether
    it can actually start. A pip-installed copy is loaded here by full path, so the provider's own
    library later finds it by name.
    """
    for name in NVINFER:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return name
        except OSError:
            pass
    spec = importlib.util.find_spec("tensorrt_libs")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name in NVINFER:
            path = Path(folder) / name
            if path.is_file():
                try:
                    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                    return str(path)
                except OSError as exc:
                    log.warning("TensorRT library %s does not load: %s", path, exc)
    return None


def unusable(available: list[str]) -> dict[str, str]:
    """Providers this build lists that cannot run on this machine, with the reason."""
    out: dict[str, str] = {}
    if TENSORRT in available and tensorrt_libraries() is None:
        out[TENSORRT] = (
            f"TensorRT's {NVINFER[0]} is not installed (pip install tensorrt-cu13-libs, or put TensorRT "
            "on LD_LIBRARY_PATH)"
        )
    return out


def resolve(requested: str, available: list[str], unusable: Mapping[str, str] | None = None) -> list[str]:
    """Provider names in fallback order for ``auto|cpu|cuda|tensorrt`` (comma lists allowed).

    ``auto`` takes every present and usable provider among TensorRT > CUDA > CPU. An explicit provider
    that this onnxruntime build lacks, or whose libraries are missing here (``unusable``: name ->
    reason), is an error that says so, not a silent fallback.
    """
    unusable = unusable or {}
    requested = requested.strip().lower() or "auto"
    if requested == "auto":
        chosen = [p for p in PREFERENCE if p in available and p not in unusable]
        for skipped, reason in unusable.items():
            log.info("auto: skipping %s: %s", skipped, reason)
    else:
        chosen = []
        for name in requested.split(","):
            provider = ALIASES.get(name.strip())
            if provider is None:
                raise ModelError(f"unknown provider {name!r}: use auto, cpu, cuda or tensorrt")
            if provider not in available:
                raise ModelError(
                    f"provider {name!r} is not in this onnxruntime build "
                    f"(available: {', '.join(available)}); "
                    "install segserve[gpu] (onnxruntime-gpu) on a machine with CUDA"
                )
            if provider in unusable:
                raise ModelError(f"provider {name!r} cannot run here: {unusable[provider]}")
            chosen.append(provider)
    if CPU not in chosen and CPU in available:
        chosen.append(CPU)  # the last resort for nodes a GPU provider does not take
    return chosen


def profile_shapes(settings: ProviderSettings) -> tuple[str, str, str] | None:
    """TensorRT's (min, opt, max) shape strings for the real input, or None when every dim is static.

    A dynamic batch spans 1..max_batch (opt: max_batch, what the batcher fills under load); dynamic
    height and width (the ``frames`` input of a resizing graph) span ``frame_hw_range``.
    """
    dims = settings.input_dims
    if not settings.input_name or len(dims) != 4 or all(d is not None for d in dims):
        return None
    (hmin, wmin), (hopt, wopt), (hmax, wmax) = settings.frame_hw_range
    ranges = [
        (dims[0],) * 3 if dims[0] is not None else (1, settings.max_batch, settings.max_batch),
        (dims[1],) * 3 if dims[1] is not None else (hmin, hopt, hmax),
        (dims[2],) * 3 if dims[2] is not None else (wmin, wopt, wmax),
        (dims[3],) * 3 if dims[3] is not None else (3, 3, 3),
    ]
    return tuple(  # type: ignore[return-value]
        f"{settings.input_name}:{'x'.join(str(r[i]) for r in ranges)}" for i in range(3)
    )


def provider_options(providers: list[str], settings: ProviderSettings) -> list[dict[str, str]]:
    """The options dict for each provider, in the same order."""
    options: list[dict[str, str]] = []
    for provider in providers:
        if provider == TENSORRT:
            opts = {
                "device_id": str(settings.device_id),
                "trt_fp16_enable": "1" if settings.trt_fp16 else "0",
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": str(settings.trt_cache_dir),
                "trt_timing_cache_enable": "1",
                "trt_timing_cache_path": str(settings.trt_cache_dir),
            }
            shapes = profile_shapes(settings)
            if shapes is not None:
                for key, shape in zip(("min", "opt", "max"), shapes, strict=True):
                    opts[f"trt_profile_{key}_shapes"] = shape
            if settings.cuda_graph:
                opts["trt_cuda_graph_enable"] = "1"
        elif provider == CUDA:
            opts = {
                "device_id": str(settings.device_id),
                "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
                "cudnn_conv_use_max_workspace": "1",
                "do_copy_in_default_stream": "1",
            }
            if settings.cuda_graph:
                opts["enable_cuda_graph"] = "1"
        else:
            opts = {}
        opts.update(settings.extra.get(provider, {}))
        options.append(opts)
    return options


def device_of(providers: list[str]) -> str:
    """Where the graph's tensors live: 'cuda' when a GPU provider leads, else 'cpu'."""
    return "cuda" if providers and providers[0] in (TENSORRT, CUDA) else "cpu"
