"""Engine: one ONNX Runtime session over a served-contract model.

``run(uint8 [N, H, W, 3] RGB) -> uint8 [N, H, W]`` class ids. With a GPU provider the engine uses IO
binding with one pair of device buffers per batch size, allocated once and reused, so a call copies
the uint8 frames in and the uint8 ids out and allocates nothing.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from segserve import providers as prov
from segserve.errors import ModelError
from segserve.graph import INPUT_NAME, OUTPUT_NAME, ModelMetadata, prepare_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    model: Path
    providers: str = "auto"
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)
    inter_op_threads: int = 1
    max_batch: int = 8
    io_binding: bool | None = None  # None: on when the device is a GPU
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int] | None = None
    provider_settings: prov.ProviderSettings | None = None


class BoundBuffers:
    """Input/output OrtValues for one batch size on one device, reused across calls."""

    def __init__(self, session: ort.InferenceSession, device: str, device_id: int, shape: tuple[int, ...]):
        n, h, w, _ = shape
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.uint8, device, device_id)
        self.output = ort.OrtValue.ortvalue_from_shape_and_type([n, h, w], np.uint8, device, device_id)
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(INPUT_NAME, self.input)
        self.binding.bind_ortvalue_output(OUTPUT_NAME, self.output)

    def run(self, session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
        self.input.update_inplace(batch)  # host -> device copy into the same buffer
        session.run_with_iobinding(self.binding)
        return self.output.numpy()  # device -> host copy of the uint8 ids


class Engine:
    """Thread-compatible: ``run`` is serialised by a lock (the batcher calls it from one thread)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        prepared = prepare_model(config.model, config.mean, config.std, config.input_size)
        self.metadata: ModelMetadata = prepared.metadata
        self.sha256 = hashlib.sha256(Path(config.model).read_bytes()).hexdigest()
        settings = config.provider_settings or prov.ProviderSettings(
            max_batch=config.max_batch, input_hw=(self.metadata.input_height, self.metadata.input_width)
        )
        available = ort.get_available_providers()
        wanted = prov.resolve(config.providers, available)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = config.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                prepared.model.SerializeToString(),
                sess_options=options,
                providers=wanted,
                provider_options=prov.provider_options(wanted, settings),
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"onnxruntime could not load {config.model}: {exc}") from exc
        self.providers: list[str] = self.session.get_providers()
        if self.providers[0] != wanted[0]:
            log.warning("provider %s was asked for but %s runs the model", wanted[0], self.providers[0])
        log.info("providers in use (fallback order): %s", " > ".join(self.providers))
        self.device = prov.device_of(self.providers)
        self.device_id = settings.device_id
        self.io_binding = self.device != "cpu" if config.io_binding is None else config.io_binding
        self.max_batch = config.max_batch if self.metadata.dynamic_batch else 1
        self._buffers: dict[int, BoundBuffers] = {}
        self._lock = threading.Lock()

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.metadata.input_height, self.metadata.input_width

    def _check(self, batch: np.ndarray) -> None:
        h, w = self.input_hw
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (h, w, 3):
            raise ValueError(f"engine expects uint8 [N, {h}, {w}, 3], got {batch.dtype} {list(batch.shape)}")

    def buffers_for(self, batch_size: int) -> BoundBuffers:
        buffers = self._buffers.get(batch_size)
        if buffers is None:
            shape = (batch_size, *self.input_hw, 3)
            buffers = self._buffers[batch_size] = BoundBuffers(self.session, self.device, self.device_id, shape)
        return buffers

    def _run_one_call(self, batch: np.ndarray) -> np.ndarray:
        if self.io_binding:
            return self.buffers_for(len(batch)).run(self.session, batch).copy()
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] RGB at the model's input size -> uint8 [N, H, W] class ids."""
        self._check(batch)
        batch = np.ascontiguousarray(batch)
        with self._lock:
            if len(batch) <= self.max_batch:
                return self._run_one_call(batch)
            parts = [self._run_one_call(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return np.concatenate(parts)

    def warm_up(self, rounds: int = 1) -> None:
        """Run every batch size so the first real frame pays no allocation or kernel-search cost."""
        h, w = self.input_hw
        rng = np.random.default_rng(0)
        for n in range(1, self.max_batch + 1):
            frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
            for _ in range(rounds):
                self.run(frames)
