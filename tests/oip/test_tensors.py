"""Tensor translation and statistics of the OIP edge, alone: the request forms tritonclient does not
send (typed ``contents``, shape ``[N]``) and the refusals, each with the tensor's name."""

from __future__ import annotations

import numpy as np
import pytest
from segserve.edge.oip_model import triton_version
from segserve.edge.oip_stats import InferStats
from segserve.edge.oip_tensors import (
    Wanted,
    deserialize_bytes,
    frames_of,
    serialize_bytes,
    timing_parameters,
    wanted_outputs,
)
from segserve.errors import InvalidFrame, InvalidOptions
from segserve.types import PixelFormat, Timing
from tritonclient.grpc import service_pb2 as oip
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

HW = (2, 3)


def request(
    name: str, datatype: str, shape: list[int], raw: bytes | None = None, **contents
) -> oip.ModelInferRequest:
    msg = oip.ModelInferRequest(model_name="m")
    tensor = msg.inputs.add(name=name, datatype=datatype, shape=shape)
    for key, values in contents.items():
        getattr(tensor.contents, key).extend(values)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    return msg


def test_bytes_layout_is_tritonclients():
    elements = [b"\xff\xd8jpeg", b"", b"png" * 50]
    ours = serialize_bytes(elements)
    assert ours == serialize_byte_tensor(np.array(elements, dtype=np.object_)).item()
    assert deserialize_bytes(ours, "IMAGE") == elements
    assert list(deserialize_bytes_tensor(ours)) == elements


@pytest.mark.parametrize(
    ("data", "words"), [(b"\x05\x00", "4-byte length"), (b"\x09\x00\x00\x00abc", "says 9 bytes")]
)
def test_bad_bytes_layout(data, words):
    with pytest.raises(InvalidFrame, match=words):
        deserialize_bytes(data, "IMAGE")


def test_encoded_frames_from_raw_or_typed_contents():
    raw = request("IMAGE", "BYTES", [2, 1], serialize_bytes([b"a", b"bb"]))
    assert frames_of(raw, HW, 8) == [b"a", b"bb"]
    typed = request("IMAGE", "BYTES", [2], bytes_contents=[b"a", b"bb"])
    assert frames_of(typed, HW, 8) == [b"a", b"bb"]


def test_raw_frames_from_raw_or_typed_contents():
    pixels = np.arange(2 * 2 * 3 * 3, dtype=np.uint8)
    frames = frames_of(request("images", "UINT8", [2, 2, 3, 3], pixels.tobytes()), HW, 8)
    assert [(f.width, f.height, f.format) for f in frames] == [(3, 2, PixelFormat.RGB)] * 2
    assert b"".join(f.data for f in frames) == pixels.tobytes()
    typed = frames_of(request("images", "UINT8", [2, 2, 3, 3], uint_contents=pixels.tolist()), HW, 8)
    assert [f.data for f in typed] == [f.data for f in frames]
    with pytest.raises(InvalidFrame, match="over 255"):
        frames_of(request("images", "UINT8", [1, 2, 3, 3], uint_contents=[256] * 18), HW, 8)


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (oip.ModelInferRequest(), "exactly one input"),
        (request("pixels", "UINT8", [1, 2, 3, 3], bytes(18)), "unknown input 'pixels'"),
        (request("IMAGE", "BYTES", [2, 1], serialize_bytes([b"a"])), "needs 2 elements, got 1"),
        (request("IMAGE", "BYTES", [1, 2], serialize_bytes([b"a", b"b"])), r"shape must be \[N, 1\]"),
        (request("IMAGE", "BYTES", [0, 1], b""), "batch dimension"),
        (request("images", "UINT8", [1, 2, 3, 3], bytes(17)), "needs 18 bytes, got 17"),
        (request("images", "FP32", [1, 2, 3, 3], bytes(72)), "must be UINT8"),
        (request("IMAGE", "BYTES", [9, 1], serialize_bytes([b"a"] * 9)), "max_batch_size 8"),
    ],
)
def test_refused_inputs(msg, words):
    with pytest.raises(InvalidFrame, match=words):
        frames_of(msg, HW, 8)


def test_raw_contents_must_cover_every_input():
    msg = request("IMAGE", "BYTES", [1, 1], serialize_bytes([b"a"]))
    msg.raw_input_contents.append(b"extra")
    with pytest.raises(InvalidFrame, match="raw_input_contents has 2 entries for 1 inputs"):
        frames_of(msg, HW, 8)


def test_unsupported_features_are_refused_by_name():
    shm = request("IMAGE", "BYTES", [1, 1], serialize_bytes([b"a"]))
    shm.inputs[0].parameters["shared_memory_region"].string_param = "r0"
    with pytest.raises(InvalidFrame, match="shared memory"):
        frames_of(shm, HW, 8)
    seq = request("IMAGE", "BYTES", [1, 1], serialize_bytes([b"a"]))
    seq.parameters["sequence_id"].int64_param = 4
    with pytest.raises(InvalidOptions, match="sequence"):
        frames_of(seq, HW, 8)


def test_wanted_outputs():
    msg = oip.ModelInferRequest()
    assert wanted_outputs(msg) == Wanted(labels=True)
    msg.parameters["overlay"].bool_param = True
    assert wanted_outputs(msg) == Wanted(labels=True, overlay=True)
    msg.outputs.add(name="coverage")
    assert wanted_outputs(msg) == Wanted(labels=False, overlay=True, coverage=True)
    msg.outputs.add(name="logits")
    with pytest.raises(InvalidOptions, match="unknown output 'logits'"):
        wanted_outputs(msg)
    wrong = oip.ModelInferRequest()
    wrong.parameters["coverage"].string_param = "yes"
    with pytest.raises(InvalidOptions, match="must be a bool"):
        wanted_outputs(wrong)


def test_timing_of_several_frames_is_the_longest_stage():
    a = Timing(decode_us=5, queue_us=1, inference_us=10, total_us=30, batch_size=2)
    b = Timing(decode_us=3, queue_us=7, inference_us=10, total_us=25, batch_size=2)
    t = timing_parameters([a, b])
    assert (t["decode_us"], t["queue_us"], t["total_us"], t["batch_size"], t["frames"]) == (5, 7, 30, 2, 2)


def test_statistics_count_requests_frames_and_engine_runs():
    stats = InferStats()
    pair = [Timing(decode_us=4, preprocess_us=1, queue_us=2, inference_us=10, encode_us=3, batch_size=2)] * 2
    stats.succeeded(pair, wall_ns=50_000)
    stats.succeeded([Timing(inference_us=6, batch_size=1)], wall_ns=20_000)
    stats.failed(wall_ns=1_000)
    msg = stats.to_proto("m", "1")
    s = msg.inference_stats
    assert (s.success.count, s.success.ns, s.fail.count, s.fail.ns) == (2, 70_000, 1, 1_000)
    assert (s.compute_input.ns, s.queue.ns, s.compute_infer.ns, s.compute_output.ns) == (
        5_000,
        2_000,
        16_000,
        3_000,
    )
    assert (msg.inference_count, msg.execution_count) == (3, 2)
    runs = {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in msg.batch_stats}
    assert runs == {1: (1, 6_000), 2: (1, 10_000)}


def test_versions_are_whole_numbers_as_perf_analyzer_parses_them():
    assert [triton_version(v) for v in ("2", "007", "", "v2", "2024-05-01", "²")] == [
        "2",
        "7",
        "1",
        "1",
        "1",
        "1",
    ]
