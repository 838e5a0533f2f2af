"""Engine: one ONNX Runtime session over a served-contract model.

``run(uint8 [N, H, W, 3] RGB) -> uint8 [N, H, W]`` class ids. With ``resize_in_graph`` the input is
decoded BGR frames of any size instead, and the graph converts and resizes them itself.

A model with a static batch size N runs N frames a call: ``max_batch`` says N so that the batcher
never forms more, and a smaller batch is padded to N with black frames whose results are dropped.

With a GPU provider the engine uses IO binding with one pair of device buffers per input shape,
allocated once and reused, so a call copies the uint8 frames in and the uint8 ids out and allocates
nothing; with ``cuda_graph`` each batch size is captured once as a CUDA graph and replayed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "onnxruntime is missing: pip install 'segserve[cpu]' (or 'segserve[gpu]' with CUDA)"
    ) from exc

from segserve import providers as prov
from segserve.errors import ModelError
from segserve.graph import (
    FRAMES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    ModelMetadata,
    PreparedModel,
    add_input_resize,
    prepare_model,
)
from segserve.modelform import ModelOptions, describe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model: Path
    providers: str = "auto"
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)
    inter_op_threads: int = 1
    spinning: bool = False  # onnxruntime pool threads busy-wait after each run (see session_options)
    max_batch: int = 8
    io_binding: bool | None = None  # None: on when the device is a GPU
    cuda_graph: bool = False
    resize_in_graph: bool = False
    mean: tuple[float, float, float] | None = None  # per channel, in the model's order and range units
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int] | None = None
    trt_cache_dir: Path | None = None
    channel_order: str | None = None  # rgb|bgr; None: metadata 'channel_order', else rgb
    input_range: str | None = None  # 0..1|0..255; None: metadata 'input_range', else 0..255
    layout: str | None = None  # nchw|nhwc; None: metadata 'layout', else read from the input's shape
    output: str | None = None  # the output holding the mask; None: metadata 'output', else the only one
    labels: str | None = None  # a label-map file or a built-in name (cityscapes)

    def model_options(self) -> ModelOptions:
        return ModelOptions(
            mean=self.mean,
            std=self.std,
            input_size=self.input_size,
            channel_order=self.channel_order,
            input_range=self.input_range,
            layout=self.layout,
            output=self.output,
            labels=self.labels,
        )


@dataclass
class EngineStats:
    """Session calls as they really ran: frames given, and black frames added to fill a static batch."""

    calls: int = 0
    frames: int = 0
    padding: int = 0


class BoundBuffers:
    """Input/output OrtValues for one input shape on one device, bound once and reused."""

    def __init__(
        self,
        session,
        input_name: str,
        device: str,
        device_id: int,
        shape: tuple[int, ...],
        out_hw: tuple[int, int],
        graph_id: int | None = None,
    ):
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.uint8, device, device_id)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type(
            [shape[0], *out_hw], np.uint8, device, device_id
        )
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(input_name, self.input)
        self.binding.bind_ortvalue_output(OUTPUT_NAME, self.output)
        self.run_options = ort.RunOptions()
        if graph_id is not None:
            self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))

    def run(self, session, batch: np.ndarray) -> np.ndarray:
        self.input.update_inplace(batch)  # host -> device copy into the same buffer
        session.run_with_iobinding(self.binding, self.run_options)
        return self.output.numpy()  # device -> host copy of the uint8 ids (a view on CPU)


def session_options(intra_op_threads: int = 0, inter_op_threads: int = 1, spinning: bool = False):
    """ORT session options as the engine uses them.

    Spinning is off by default: after each run onnxruntime's pool threads busy-wait for more work,
    which on a small CPU takes a core away from the decode/resize/encode stages of the same and the
    next frames (measured in benchmarks/README.md); on a GPU it changes nothing.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _session(model_bytes: bytes, options, providers: list[str], provider_options: list[dict]):
    return ort.InferenceSession(
        model_bytes, sess_options=options, providers=providers, provider_options=provider_options
    )


class Engine:
    """``run`` is serialised by a lock; the batcher calls it from one thread anyway."""

    def __init__(self, config: EngineConfig, prepared: PreparedModel | None = None):
        """``prepared``: the model already prepared from ``config`` (``segserve inspect`` has it)."""
        self.config = config
        prepared = prepared or prepare_model(config.model, options=config.model_options())
        self.metadata: ModelMetadata = prepared.metadata
        if prepared.form is not None:
            log.info("model %s@%s", self.metadata.name, self.metadata.version)
            for line in describe(prepared.form):
                (log.warning if line.startswith("note") else log.info)("  %s", line)
        self.sha256 = hashlib.sha256(Path(config.model).read_bytes()).hexdigest()
        model = prepared.model
        self.resize_in_graph = config.resize_in_graph
        if self.resize_in_graph:
            model = add_input_resize(model, *self.input_hw)
        self.input_name = FRAMES_NAME if self.resize_in_graph else INPUT_NAME
        settings = prov.ProviderSettings(
            max_batch=self.metadata.static_batch or config.max_batch,
            input_hw=self.input_hw,
            cuda_graph=config.cuda_graph,
            **({"trt_cache_dir": config.trt_cache_dir} if config.trt_cache_dir else {}),
        )
        options = session_options(config.intra_op_threads, config.inter_op_threads, config.spinning)
        self.session, self.providers = self._create_session(model.SerializeToString(), options, settings)
        log.info("providers in use (fallback order): %s", " > ".join(self.providers))
        self.device = prov.device_of(self.providers)
        self.device_id = settings.device_id
        self.io_binding = self.device != "cpu" if config.io_binding is None else config.io_binding
        self.cuda_graph = config.cuda_graph and self.device == "cuda" and self.io_binding
        # The truth about batches: a static batch size is the most (and the least) one call takes.
        self.static_batch = self.metadata.static_batch
        self.max_batch = self.static_batch or config.max_batch
        self.stats = EngineStats()
        self._buffers: dict[tuple[int, ...], BoundBuffers] = {}
        self._lock = threading.Lock()

    def _create_session(self, model_bytes: bytes, options, settings: prov.ProviderSettings):
        """Create the session, walking down the fallback order when a GPU provider fails to start."""
        wanted = prov.resolve(self.config.providers, ort.get_available_providers())
        attempts = [wanted[i:] for i in range(len(wanted))] if self.config.providers == "auto" else [wanted]
        errors = []
        for providers in attempts:
            try:
                session = _session(
                    model_bytes, options, providers, prov.provider_options(providers, settings)
                )
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/EP errors
                errors.append(f"{providers[0]}: {exc}")
                log.warning("could not start %s (%s); falling back", providers[0], str(exc).splitlines()[0])
                continue
            used = session.get_providers()
            if used[0] != wanted[0]:
                log.warning("provider %s was asked for but %s runs the model", wanted[0], used[0])
            return session, used
        raise ModelError(f"onnxruntime could not load {self.config.model}: {'; '.join(errors)}")

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.metadata.input_height, self.metadata.input_width

    def _check(self, batch: np.ndarray) -> None:
        h, w = self.input_hw
        if (
            batch.dtype != np.uint8
            or batch.ndim != 4
            or batch.shape[3] != 3
            or (not self.resize_in_graph and batch.shape[1:3] != (h, w))
        ):
            raise ValueError(f"engine expects uint8 [N, {h}, {w}, 3], got {batch.dtype} {list(batch.shape)}")

    def buffers_for(self, shape: tuple[int, ...]) -> BoundBuffers:
        buffers = self._buffers.get(shape)
        if buffers is None:
            graph_id = len(self._buffers) if self.cuda_graph else None
            buffers = BoundBuffers(
                self.session, self.input_name, self.device, self.device_id, shape, self.input_hw, graph_id
            )
            self._buffers[shape] = buffers
        return buffers

    def _run_one_call(self, batch: np.ndarray) -> np.ndarray:
        if self.io_binding:
            return self.buffers_for(batch.shape).run(self.session, batch).copy()
        return self.session.run([OUTPUT_NAME], {self.input_name: batch})[0]

    def _run_padded(self, batch: np.ndarray) -> np.ndarray:
        """One call; with a static batch size N, fewer frames are padded to N and the padding dropped."""
        real = len(batch)
        self.stats.calls += 1
        self.stats.frames += real
        if self.static_batch is None or real == self.static_batch:
            return self._run_one_call(batch)
        self.stats.padding += self.static_batch - real
        padded = np.zeros((self.static_batch, *batch.shape[1:]), np.uint8)
        padded[:real] = batch
        return self._run_one_call(padded)[:real]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB at the input size (any-size BGR with resize_in_graph) -> uint8 ids."""
        self._check(batch)
        batch = np.ascontiguousarray(batch)
        step = self.max_batch
        with self._lock:
            if len(batch) <= step:
                return self._run_padded(batch)
            parts = [self._run_padded(batch[i : i + step]) for i in range(0, len(batch), step)]
        return np.concatenate(parts)

    def warm_up(self, rounds: int = 1) -> None:
        """Run every batch size so the first real frame pays no allocation or kernel-search cost."""
        h, w = self.input_hw
        rng = np.random.default_rng(0)
        sizes = [self.static_batch] if self.static_batch else range(1, self.max_batch + 1)
        for n in sizes:
            frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            for _ in range(rounds):
                self.run(frames)
