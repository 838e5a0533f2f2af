"""Execution-provider choice: what the user asked for, what this onnxruntime build has, and the
options each provider runs with. Pure functions over names, so they are tested without a GPU."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from segserve.errors import ModelError

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}


@dataclass(frozen=True)
class ProviderSettings:
    """Knobs for the GPU providers; ignored on CPU."""

    device_id: int = 0
    trt_fp16: bool = True
    trt_cache_dir: Path = Path.home() / ".cache" / "segserve" / "trt"
    cudnn_conv_algo_search: str = "EXHAUSTIVE"  # shapes are fixed, so the one-off search pays
    max_batch: int = 8
    input_hw: tuple[int, int] = (0, 0)
    cuda_graph: bool = False  # needs IO binding with fixed buffers: one graph per batch size
    extra: dict[str, dict[str, str]] = field(default_factory=dict)


def resolve(requested: str, available: list[str]) -> list[str]:
    """Provider names in fallback order for ``auto|cpu|cuda|tensorrt`` (comma lists allowed).

    ``auto`` takes every present provider among TensorRT > CUDA > CPU. An explicit provider that this
    onnxruntime build lacks is an error that says what is present, not a silent fallback.
    """
    requested = requested.strip().lower() or "auto"
    if requested == "auto":
        chosen = [p for p in PREFERENCE if p in available]
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
            chosen.append(provider)
    if CPU not in chosen and CPU in available:
        chosen.append(CPU)  # the last resort for nodes a GPU provider does not take
    return chosen


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
            height, width = settings.input_hw
            if height and width:
                shape = f"images:{{}}x{height}x{width}x3"
                opts["trt_profile_min_shapes"] = shape.format(1)
                opts["trt_profile_opt_shapes"] = shape.format(settings.max_batch)
                opts["trt_profile_max_shapes"] = shape.format(settings.max_batch)
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
