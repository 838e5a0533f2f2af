"""Open Inference Protocol tensors <-> frames and results (``segserve.types``).

The tensor contract (batch first, as Triton models with ``max_batch_size > 0`` take):

- inputs, exactly one of: ``IMAGE`` BYTES ``[N, 1]``, each element an encoded JPEG or PNG frame of
  any size; ``images`` UINT8 ``[N, H, W, 3]``, RGB at the model's input size;
- outputs: ``labels`` UINT8 ``[N, H, W]`` class ids at the model's input size (the default);
  ``overlay`` BYTES ``[N, 1]`` (JPEG of each frame with the class colours blended in) and
  ``coverage`` FP32 ``[N, C]`` (share of each class's pixels, classes in the label map's order)
  when requested as outputs or with the bool request parameters ``overlay`` / ``coverage``.

Data comes in ``raw_input_contents`` (what ``tritonclient`` sends) or in the typed ``contents``;
answers go in ``raw_output_contents`` (BYTES elements as 4-byte little-endian length + bytes), which
``InferResult.as_numpy`` reads. Anything else is an ``InvalidFrame``/``InvalidOptions`` with the
tensor's name.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2 as oip

from segserve.errors import InvalidFrame, InvalidOptions
from segserve.types import FrameResult, PixelFormat, RawFrame, Timing

IMAGE = "IMAGE"
IMAGES = "images"
LABELS = "labels"
OVERLAY = "overlay"
COVERAGE = "coverage"
INPUTS = (IMAGE, IMAGES)
OUTPUTS = (LABELS, OVERLAY, COVERAGE)
TIMING_FIELDS = (
    "decode_us",
    "queue_us",
    "preprocess_us",
    "inference_us",
    "postprocess_us",
    "encode_us",
    "total_us",
)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Wanted:
    """Which outputs a request asked for."""

    labels: bool = True
    overlay: bool = False
    coverage: bool = False


# --- BYTES tensors ------------------------------------------------------------------------------------
def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """Triton's raw BYTES layout: each element as a uint32 little-endian length, then its bytes."""
    parts: list[bytes] = []
    for element in elements:
        parts.append(_LENGTH.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def deserialize_bytes(data: bytes, name: str) -> list[bytes]:
    out: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise InvalidFrame(f"input {name}: BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(data, pos)
        pos += 4
        if pos + length > len(data):
            raise InvalidFrame(
                f"input {name}: element {len(out)} says {length} bytes but only {len(data) - pos} follow"
            )
        out.append(bytes(view[pos : pos + length]))
        pos += length
    return out


# --- requests -----------------------------------------------------------------------------------------
def _bool_parameter(parameters, key: str) -> bool:
    if key not in parameters:
        return False
    param = parameters[key]
    if param.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidOptions(f"request parameter {key!r} must be a bool")
    return param.bool_param


def wanted_outputs(request: oip.ModelInferRequest) -> Wanted:
    """The requested outputs; none requested means ``labels`` (plus what the parameters ask for)."""
    overlay = _bool_parameter(request.parameters, OVERLAY)
    coverage = _bool_parameter(request.parameters, COVERAGE)
    if not request.outputs:
        return Wanted(True, overlay, coverage)
    names = set()
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise InvalidOptions(f"unknown output {output.name[:64]!r}: this model has {', '.join(OUTPUTS)}")
        if "classification" in output.parameters:
            raise InvalidOptions(f"output {output.name}: the classification extension is not supported")
        if "shared_memory_region" in output.parameters:
            raise InvalidOptions(
                f"output {output.name}: shared memory is not supported; take the data inline"
            )
        names.add(output.name)
    return Wanted(LABELS in names, overlay or OVERLAY in names, coverage or COVERAGE in names)


def _check_parameters(request: oip.ModelInferRequest) -> None:
    sequence = request.parameters.get("sequence_id")
    if sequence is not None and (sequence.int64_param or sequence.string_param or sequence.uint64_param):
        raise InvalidOptions("sequence_id: the model is stateless; sequence batching is not supported")


def _tensor_data(request: oip.ModelInferRequest, index: int) -> bytes | None:
    """The raw bytes of input ``index``, or None when it came in the typed ``contents``."""
    if not request.raw_input_contents:
        return None
    if len(request.raw_input_contents) != len(request.inputs):
        raise InvalidFrame(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(request.inputs)} "
            "inputs: give every input's data there, or all in `contents`"
        )
    return request.raw_input_contents[index]


def _batch_size(tensor: oip.ModelInferRequest.InferInputTensor, max_batch: int) -> int:
    if not tensor.shape or tensor.shape[0] < 1:
        raise InvalidFrame(f"input {tensor.name}: shape {list(tensor.shape)} has no batch dimension >= 1")
    n = int(tensor.shape[0])
    if n > max_batch:
        raise InvalidFrame(
            f"input {tensor.name}: batch of {n} is over the model's max_batch_size {max_batch}"
        )
    return n


def _encoded_frames(tensor, raw: bytes | None, max_batch: int) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise InvalidFrame(f"input {IMAGE} must be BYTES (encoded JPEG/PNG), got {tensor.datatype[:16]}")
    n = _batch_size(tensor, max_batch)
    if list(tensor.shape) not in ([n, 1], [n]):
        raise InvalidFrame(f"input {IMAGE}: shape must be [N, 1], got {list(tensor.shape)}")
    elements = deserialize_bytes(raw, IMAGE) if raw is not None else list(tensor.contents.bytes_contents)
    if len(elements) != n:
        raise InvalidFrame(
            f"input {IMAGE}: shape {list(tensor.shape)} needs {n} elements, got {len(elements)}"
        )
    return elements


def _raw_frames(tensor, raw: bytes | None, model_hw: tuple[int, int], max_batch: int) -> list[RawFrame]:
    if tensor.datatype != "UINT8":
        raise InvalidFrame(f"input {IMAGES} must be UINT8 RGB, got {tensor.datatype[:16]}")
    n = _batch_size(tensor, max_batch)
    h, w = model_hw
    if list(tensor.shape) != [n, h, w, 3]:
        raise InvalidFrame(
            f"input {IMAGES}: shape must be [N, {h}, {w}, 3] (RGB at the model's input size), "
            f"got {list(tensor.shape)}; send other sizes as encoded frames in {IMAGE}"
        )
    if raw is None:
        values = np.asarray(tensor.contents.uint_contents, np.uint32)
        if values.size and int(values.max()) > 255:
            raise InvalidFrame(f"input {IMAGES}: uint_contents holds values over 255")
        raw = values.astype(np.uint8).tobytes()
    frame_bytes = h * w * 3
    if len(raw) != n * frame_bytes:
        raise InvalidFrame(
            f"input {IMAGES}: shape {list(tensor.shape)} needs {n * frame_bytes} bytes, got {len(raw)}"
        )
    if n == 1:
        return [RawFrame(w, h, PixelFormat.RGB, raw)]
    return [RawFrame(w, h, PixelFormat.RGB, raw[i * frame_bytes : (i + 1) * frame_bytes]) for i in range(n)]


def frames_of(
    request: oip.ModelInferRequest, model_hw: tuple[int, int], max_batch: int
) -> list[bytes] | list[RawFrame]:
    """The request's frames: encoded bytes (``IMAGE``) or raw RGB frames (``images``)."""
    _check_parameters(request)
    if len(request.inputs) != 1:
        given = ", ".join(t.name[:64] for t in request.inputs) or "none"
        raise InvalidFrame(f"give exactly one input, {IMAGE} (BYTES) or {IMAGES} (UINT8); got {given}")
    tensor = request.inputs[0]
    if tensor.name not in INPUTS:
        raise InvalidFrame(f"unknown input {tensor.name[:64]!r}: this model takes {IMAGE} or {IMAGES}")
    if "shared_memory_region" in tensor.parameters:
        raise InvalidFrame(f"input {tensor.name}: shared memory is not supported; send the data inline")
    raw = _tensor_data(request, 0)
    if tensor.name == IMAGE:
        return _encoded_frames(tensor, raw, max_batch)
    return _raw_frames(tensor, raw, model_hw, max_batch)


# --- responses ----------------------------------------------------------------------------------------
def timing_parameters(timings: Sequence[Timing]) -> dict[str, int]:
    """Per-stage microseconds; for several frames (run concurrently) the longest of each stage, and the
    largest engine batch any of them ran in."""
    out = {f: max(getattr(t, f) for t in timings) for f in TIMING_FIELDS}
    out["batch_size"] = max(t.batch_size for t in timings)
    out["frames"] = len(timings)
    return out


def coverage_matrix(results: Sequence[FrameResult], class_ids: Sequence[int]) -> np.ndarray:
    column = {cid: j for j, cid in enumerate(class_ids)}
    matrix = np.zeros((len(results), len(class_ids)), np.float32)
    for i, result in enumerate(results):
        for c in result.coverage:
            j = column.get(c.class_id)
            if j is not None:
                matrix[i, j] = c.fraction
    return matrix


def fill_response(
    response: oip.ModelInferResponse,
    results: Sequence[FrameResult],
    wanted: Wanted,
    class_ids: Sequence[int],
) -> oip.ModelInferResponse:
    """Add the outputs (raw contents, in ``wanted``'s order) and the timing parameters."""
    n = len(results)
    if wanted.labels:
        labels = [np.ascontiguousarray(r.labels, np.uint8) for r in results]
        h, w = labels[0].shape
        response.outputs.add(name=LABELS, datatype="UINT8", shape=[n, h, w])
        response.raw_output_contents.append(
            labels[0].tobytes() if n == 1 else b"".join(a.tobytes() for a in labels)
        )
    if wanted.overlay:
        response.outputs.add(name=OVERLAY, datatype="BYTES", shape=[n, 1])
        response.raw_output_contents.append(
            serialize_bytes([r.overlay.data if r.overlay is not None else b"" for r in results])
        )
    if wanted.coverage:
        response.outputs.add(name=COVERAGE, datatype="FP32", shape=[n, len(class_ids)])
        response.raw_output_contents.append(coverage_matrix(results, class_ids).tobytes())
    for key, value in timing_parameters([r.timing for r in results]).items():
        response.parameters[key].int64_param = value
    return response
