"""How the served model looks through the Open Inference Protocol: metadata and Triton's config.

``ModelConfig`` is written the way perf_analyzer and model-analyzer read it: ``max_batch_size`` (so
every tensor's first dimension is the batch), inputs and outputs with their dims (batch left out)
and types, both inputs ``optional`` (a request gives one of them), ``dynamic_batching`` with the
batcher's delay. No ``model_transaction_policy`` (perf_analyzer reads ``decoupled`` from it when
present, and the model is not decoupled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as oip

from segserve.edge.oip_tensors import COVERAGE, IMAGE, IMAGES, LABELS, OVERLAY
from segserve.graph import ModelMetadata

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"


def triton_version(version: str) -> str:
    """Triton's versions are whole numbers, and perf_analyzer parses them (``std::stoll``): the served
    version when it is one, else "1"."""
    return str(int(version)) if version.isdigit() and version.isascii() else "1"


@dataclass(frozen=True)
class ModelDescription:
    name: str
    version: str  # as Triton clients see it (``triton_version``)
    served_version: str  # the model's own (GetModelInfo's), also accepted in requests
    height: int
    width: int
    class_ids: tuple[int, ...]
    labels_json: str
    max_batch: int
    max_delay_us: int
    gpu: bool

    @classmethod
    def of(
        cls, metadata: ModelMetadata, max_batch: int, max_delay_ms: float, device: str
    ) -> ModelDescription:
        return cls(
            name=metadata.name,
            version=triton_version(metadata.version),
            served_version=metadata.version,
            height=metadata.input_height,
            width=metadata.input_width,
            class_ids=tuple(c.id for c in metadata.labels.classes),
            labels_json=json.dumps(metadata.labels.to_dict(), separators=(",", ":")),
            max_batch=max_batch,
            max_delay_us=round(max_delay_ms * 1000),
            gpu=device != "cpu",
        )

    def matches(self, name: str, version: str) -> bool:
        """Triton's addressing: the model's name, and no version or the served one."""
        return name == self.name and version in ("", self.version, self.served_version)

    def _tensors(self) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
        """(name, KServe datatype, dims without the batch) of the inputs and the outputs."""
        h, w = self.height, self.width
        inputs = [(IMAGE, "BYTES", [1]), (IMAGES, "UINT8", [h, w, 3])]
        outputs = [
            (LABELS, "UINT8", [h, w]),
            (OVERLAY, "BYTES", [1]),
            (COVERAGE, "FP32", [len(self.class_ids)]),
        ]
        return inputs, outputs

    def metadata(self) -> oip.ModelMetadataResponse:
        inputs, outputs = self._tensors()
        return oip.ModelMetadataResponse(
            name=self.name,
            versions=[self.version],
            platform=PLATFORM,
            inputs=[
                oip.ModelMetadataResponse.TensorMetadata(name=n, datatype=t, shape=[-1, *d])
                for n, t, d in inputs
            ],
            outputs=[
                oip.ModelMetadataResponse.TensorMetadata(name=n, datatype=t, shape=[-1, *d])
                for n, t, d in outputs
            ],
        )

    def config(self) -> oip.ModelConfigResponse:
        inputs, outputs = self._tensors()
        types = {"BYTES": mc.TYPE_STRING, "UINT8": mc.TYPE_UINT8, "FP32": mc.TYPE_FP32}
        config = mc.ModelConfig(
            name=self.name,
            platform=PLATFORM,
            backend=BACKEND,
            max_batch_size=self.max_batch,
            input=[mc.ModelInput(name=n, data_type=types[t], dims=d, optional=True) for n, t, d in inputs],
            output=[mc.ModelOutput(name=n, data_type=types[t], dims=d) for n, t, d in outputs],
            instance_group=[
                mc.ModelInstanceGroup(
                    name=self.name,
                    count=1,
                    kind=mc.ModelInstanceGroup.KIND_GPU if self.gpu else mc.ModelInstanceGroup.KIND_CPU,
                )
            ],
        )
        if self.max_batch > 1:
            config.dynamic_batching.max_queue_delay_microseconds = self.max_delay_us
        config.parameters["labels"].string_value = self.labels_json
        return oip.ModelConfigResponse(config=config)
