"""One function per layer. Each returns a JSON-ready dict; times are milliseconds.

Latency figures (p50/p95/p99) are per call. With concurrency, ``per_frame_cost_ms`` is wall time
divided by frames (the inverse of aggregate throughput): the cost of a frame when the machine is
kept busy, the figure the streaming acceptance ratio compares.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import grpc
import numpy as np

from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.bench.stats import histogram, summary
from segserve.graph import OUTPUT_NAME
from segserve.types import FrameRequest, FrameResult, MaskFormat, MaskResolution, OutputOptions, OverlayFormat

# The workload every service layer runs: full-resolution PNG mask and JPEG overlay out.
OPTIONS = OutputOptions(
    mask=MaskFormat.PNG,
    mask_resolution=MaskResolution.FRAME,
    overlay=OverlayFormat.JPEG,
    overlay_alpha=0.5,
    jpeg_quality=85,
)
PB_OPTIONS = pb.OutputOptions(
    mask=pb.MASK_ENCODING_PNG,
    mask_resolution=pb.MASK_RESOLUTION_FRAME,
    overlay=pb.OVERLAY_ENCODING_JPEG,
    overlay_alpha=0.5,
    overlay_jpeg_quality=85,
)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
STAGES = ("decode_us", "queue_us", "preprocess_us", "inference_us", "postprocess_us", "encode_us", "total_us")


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


def timed_loop(fn: Callable[[int], object], count: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        out.append(_ms(t0, time.perf_counter()))
    return out


# --- bare ONNX Runtime ------------------------------------------------------------------------------
def bare_ort(
    session,
    input_name: str,
    inputs: Sequence[np.ndarray],
    batch_sizes: Sequence[int],
    frames: int,
    warmup: int,
) -> dict:
    """``session.run`` alone on uint8 NHWC batches already at the model's size (no copies, no Python work)."""
    out = {}
    for b in batch_sizes:
        batches = [np.stack([inputs[(i * b + j) % len(inputs)] for j in range(b)]) for i in range(4)]
        calls = max(3, frames // b)

        def run_batch(i: int, bs: list[np.ndarray] = batches) -> object:
            return session.run([OUTPUT_NAME], {input_name: bs[i % len(bs)]})

        times = timed_loop(run_batch, calls, warmup)
        s = summary(times)
        s["per_frame_ms"] = round(s["p50"] / b, 3)
        s["fps"] = round(1000.0 * b / s["p50"], 1)
        out[str(b)] = s
    return out


def float_core(
    session, input_name: str, inputs: Sequence[np.ndarray], mean, std, frames: int, warmup: int
) -> dict:
    """The float network alone (normalised NCHW in, logits out), batch 1: the time both pipelines share."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    tensors = [
        np.ascontiguousarray(((x.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None])
        for x in inputs[:4]
    ]
    return summary(
        timed_loop(lambda i: session.run(None, {input_name: tensors[i % len(tensors)]}), frames, warmup)
    )


def transfers(engine, inputs: Sequence[np.ndarray], batch_sizes: Sequence[int], frames: int) -> dict:
    """Host->device and device->host bytes and time per frame through IO binding (uint8 in, uint8 ids out).

    On CPU the "device" is host memory, so the times are plain copies; on CUDA they are PCIe transfers.
    The float path's bytes (float32 NCHW in, float32 logits out) are given for comparison.
    """
    import onnxruntime as ort

    device, device_id = engine.device, engine.device_id
    h, w = engine.input_hw
    classes = engine.metadata.labels.num_classes
    out = {"device": device}
    for b in batch_sizes:
        batch = np.stack([inputs[j % len(inputs)] for j in range(b)])
        x = ort.OrtValue.ortvalue_from_shape_and_type(list(batch.shape), np.uint8, device, device_id)
        y = ort.OrtValue.ortvalue_from_shape_and_type([b, h, w], np.uint8, device, device_id)
        binding = engine.session.io_binding()
        binding.bind_ortvalue_input(engine.input_name, x)
        binding.bind_ortvalue_output(OUTPUT_NAME, y)
        h2d, run, d2h = [], [], []
        for i in range(max(3, frames // b) + 2):
            t0 = time.perf_counter()
            x.update_inplace(batch)
            t1 = time.perf_counter()
            engine.session.run_with_iobinding(binding)
            t2 = time.perf_counter()
            y.numpy()
            t3 = time.perf_counter()
            if i >= 2:
                h2d.append(_ms(t0, t1) / b)
                run.append(_ms(t1, t2) / b)
                d2h.append(_ms(t2, t3) / b)
        out[str(b)] = {
            "h2d_bytes_per_frame": h * w * 3,
            "d2h_bytes_per_frame": h * w,
            "float_path_h2d_bytes_per_frame": 3 * h * w * 4,
            "float_path_d2h_bytes_per_frame": classes * h * w * 4,
            "h2d_ms_per_frame": summary(h2d),
            "run_ms_per_frame": summary(run),
            "d2h_ms_per_frame": summary(d2h),
        }
    return out


# --- the in-process pipeline ------------------------------------------------------------------------
def _timing_means(timings: list) -> dict:
    return (
        {
            s.removesuffix("_us") + "_ms": round(float(np.mean([getattr(t, s) for t in timings])) / 1000, 3)
            for s in STAGES
        }
        if timings
        else {}
    )


class SyncPipeline(Protocol):
    """The served pipeline called from a plain thread (``run.LoopPipeline`` runs it on the server's loop)."""

    def process(self, request: FrameRequest) -> FrameResult: ...


def pipeline_sequential(pipeline: SyncPipeline, jpegs: Sequence[bytes], frames: int, warmup: int) -> dict:
    timings = []

    def one(i: int) -> None:
        result = pipeline.process(
            FrameRequest(frame_id=str(i), encoded=jpegs[i % len(jpegs)], options=OPTIONS)
        )
        timings.append(result.timing)

    s = summary(timed_loop(one, frames, warmup))
    s["stages_mean"] = _timing_means(timings[warmup:])
    return s


def concurrent(work: Callable[[int], int | None], threads: int, frames: int, warmup: int) -> dict:
    """``threads`` workers share ``frames`` calls of ``work(i)``; ``work`` returns the frame's batch size."""
    for i in range(warmup):
        work(i)
    latency_of, batches_of, wall = _mixed({"work": work}, threads, frames)
    latencies, batches = latency_of["work"], batches_of["work"]
    s = summary(latencies)
    s.update(
        concurrency=threads,
        per_frame_cost_ms=round(wall * 1000 / frames, 3),
        fps=round(frames / wall, 1),
        batch_sizes=histogram(batches),
    )
    return s


def pipeline_concurrent(
    pipeline: SyncPipeline, jpegs: Sequence[bytes], threads: int, frames: int, warmup: int
) -> dict:
    def work(i: int) -> int:
        return pipeline.process(
            FrameRequest(frame_id=str(i), encoded=jpegs[i % len(jpegs)], options=OPTIONS)
        ).timing.batch_size

    return concurrent(work, threads, frames, warmup)


# --- gRPC -------------------------------------------------------------------------------------------
def requests(jpegs: Sequence[bytes], frames: int) -> list[pb.SegmentRequest]:
    return [
        pb.SegmentRequest(frame_id=str(i), encoded=jpegs[i % len(jpegs)], outputs=PB_OPTIONS)
        for i in range(frames)
    ]


def segment_rpc(target: str, jpegs: Sequence[bytes], frames: int, warmup: int) -> dict:
    """Unary ``Segment`` calls, one at a time, on one channel; the response is parsed, not decoded."""
    reqs = requests(jpegs, max(frames, warmup))
    server_total: list[float] = []
    sizes: list[int] = []
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.SegmenterStub(channel)

        def one(i: int) -> None:
            response = stub.Segment(reqs[i % len(reqs)], timeout=60)
            server_total.append(response.timing.total_us / 1000)
            sizes.append(response.ByteSize())

        s = summary(timed_loop(one, frames, warmup))
    s["server_total_ms"] = summary(server_total[warmup:])
    s["mean_response_kb"] = round(float(np.mean(sizes)) / 1024, 1) if sizes else 0.0
    return s


def segment_rpc_concurrent(
    target: str, jpegs: Sequence[bytes], threads: int, frames: int, warmup: int
) -> dict:
    """``threads`` callers of unary ``Segment``; ``outside_server_ms``: each call's client-observed
    latency minus the server's own ``Timing.total_us`` (transport, dispatch, the client's own work)."""
    reqs = requests(jpegs, frames)
    outside: list[float] = []
    lock = threading.Lock()
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.SegmenterStub(channel)

        def work(i: int) -> int:
            t0 = time.perf_counter()
            response = stub.Segment(reqs[i % len(reqs)], timeout=60)
            client_ms = _ms(t0, time.perf_counter())
            with lock:
                outside.append(client_ms - response.timing.total_us / 1000)
            return response.timing.batch_size

        s = concurrent(work, threads, frames, warmup)
    s["outside_server_ms"] = summary(outside[warmup:])
    return s


def _one_stream(
    target: str,
    reqs: list[pb.SegmentRequest],
    window: int,
    start: threading.Barrier,
    latencies: list[float],
    batches: list[int],
    errors: list[str],
) -> None:
    feed: queue.Queue = queue.Queue()
    sent: dict[str, float] = {}

    def generate():
        while True:
            msg = feed.get()
            if msg is None:
                return
            sent[msg.frame_id] = time.perf_counter()
            yield msg

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        start.wait()
        for msg in reqs[:window]:
            feed.put(msg)
        nxt = min(window, len(reqs))
        if nxt == len(reqs):
            feed.put(None)
        try:
            for response in stub.StreamSegment(generate(), timeout=600):
                t = time.perf_counter()
                latencies.append(_ms(sent.pop(response.frame_id), t))
                if response.HasField("error"):
                    errors.append(response.error.message)
                batches.append(response.timing.batch_size)
                if nxt < len(reqs):
                    feed.put(reqs[nxt])
                    nxt += 1
                    if nxt == len(reqs):
                        feed.put(None)
        except grpc.RpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
            feed.put(None)


def stream_segment(target: str, jpegs: Sequence[bytes], streams: int, frames: int, window: int = 1) -> dict:
    """``streams`` StreamSegment calls at once, each on its own channel (one per camera), each keeping
    ``window`` frames in flight; ``frames`` frames in all."""
    per = max(2, frames // streams)
    all_reqs = requests(jpegs, per * streams)
    latencies: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    start = threading.Barrier(streams + 1)
    threads = [
        threading.Thread(
            target=_one_stream,
            args=(target, all_reqs[k * per : (k + 1) * per], window, start, latencies, batches, errors),
        )
        for k in range(streams)
    ]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = per * streams
    s = summary(latencies)
    s.update(
        streams=streams,
        window=window,
        per_frame_cost_ms=round(wall * 1000 / total, 3),
        fps=round(total / wall, 1),
        batch_sizes=histogram(batches),
        errors=len(errors),
    )
    if errors:
        s["first_error"] = errors[0]
    return s


# --- the naive reference ----------------------------------------------------------------------------
def naive(pipeline, jpegs: Sequence[bytes], frames: int, warmup: int) -> dict:
    stages: list[dict] = []

    def one(i: int) -> None:
        stages.append(pipeline.process(jpegs[i % len(jpegs)]).stages_ms)

    s = summary(timed_loop(one, frames, warmup))
    kept = stages[warmup:]
    s["stages_mean"] = (
        {k + "_ms": round(float(np.mean([st[k] for st in kept])), 3) for k in kept[0]} if kept else {}
    )
    return s


# --- paired (interleaved) measurement ----------------------------------------------------------------
def interleaved(
    calls: Mapping[str, Callable[[int], object]], frames: int, warmup: int, block: int = 8
) -> dict[str, list[float]]:
    """The layers take turns in blocks of ``block`` frames (the same frames for each), so a background load
    that comes and goes (other processes on a shared machine) hits every layer alike; the first call of
    each block is a warm-up and is not counted, so each layer is timed in its steady state."""
    for i in range(warmup):
        for fn in calls.values():
            fn(i)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for first in range(0, frames, block):
        indices = range(first, min(first + block, frames))
        for name, fn in calls.items():
            fn(indices[0] + 1)
            for i in indices:
                t0 = time.perf_counter()
                fn(i)
                times[name].append(_ms(t0, time.perf_counter()))
    return times


# --- the Open Inference Protocol (ModelInfer) against Segment with the same outputs -------------------
# ModelInfer answers class ids at the model's size (raw) and, here, the JPEG overlay: the Segment request
# that does the very same work asks for a raw mask at the model's size and the same overlay.
SEGMENT_LIKE_MODEL_INFER = pb.OutputOptions(
    mask=pb.MASK_ENCODING_RAW,
    mask_resolution=pb.MASK_RESOLUTION_MODEL,
    overlay=pb.OVERLAY_ENCODING_JPEG,
    overlay_alpha=0.5,
    overlay_jpeg_quality=85,
)


def model_infer_requests(model: str, jpegs: Sequence[bytes], frames: int) -> list:
    """``ModelInferRequest``s as ``tritonclient`` builds them: one JPEG in ``IMAGE`` (raw contents),
    ``labels`` and ``overlay`` asked for."""
    from tritonclient.grpc import service_pb2 as oip

    from segserve.edge.oip_tensors import serialize_bytes

    out = []
    for i in range(frames):
        request = oip.ModelInferRequest(model_name=model, id=str(i))
        request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(serialize_bytes([jpegs[i % len(jpegs)]]))
        request.outputs.add(name="labels")
        request.outputs.add(name="overlay")
        out.append(request)
    return out


def _mixed(
    calls: dict[str, Callable[[int], int | None]], threads: int, frames: int
) -> tuple[dict, dict, float]:
    """``threads`` callers share ``frames`` calls, alternating between the methods of ``calls`` (each
    returns the frame's batch size), so both run under the very same load at the same time: (latencies
    ms per method, batch sizes per method, wall seconds)."""
    names = list(calls)
    counter = iter(range(frames))
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {n: [] for n in names}
    batches: dict[str, list[int]] = {n: [] for n in names}
    start = threading.Barrier(threads + 1)

    def worker() -> None:
        start.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            name = names[i % len(names)]
            t0 = time.perf_counter()
            batch = calls[name](i // len(names))
            t1 = time.perf_counter()
            with lock:
                latencies[name].append(_ms(t0, t1))
                batches[name].append(int(batch or 0))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return latencies, batches, time.perf_counter() - t0


def model_infer_vs_segment(
    target: str,
    model: str,
    jpegs: Sequence[bytes],
    frames: int,
    warmup: int,
    callers: Sequence[int] = (1, 8),
) -> dict:
    """``ModelInfer`` and ``Segment`` (same frames, same outputs), each on a channel of its own, taking
    turns so that a background load hits both alike: one caller alternates call by call (the order
    swapped every frame); ``k`` callers each alternate between the two, so ``k`` frames are always in
    flight, half of each kind. Per caller count: each method's summary (``frames`` calls each) and
    ``p50_ratio`` = ModelInfer p50 / Segment p50; with several callers ``fps`` is both together."""
    from tritonclient.grpc import service_pb2_grpc as oip_grpc

    oip_reqs = model_infer_requests(model, jpegs, len(jpegs))
    seg_reqs = [
        pb.SegmentRequest(frame_id=str(i), encoded=j, outputs=SEGMENT_LIKE_MODEL_INFER)
        for i, j in enumerate(jpegs)
    ]
    out: dict = {
        "workload": "1080p JPEG in; class ids at the model's size (raw) and a JPEG overlay (q85) out",
    }
    with (
        grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as seg_channel,
        grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as oip_channel,
    ):
        segment = pb_grpc.SegmenterStub(seg_channel).Segment
        infer = oip_grpc.GRPCInferenceServiceStub(oip_channel).ModelInfer
        calls = {
            "segment": lambda i: segment(seg_reqs[i % len(seg_reqs)], timeout=60).timing.batch_size,
            "model_infer": lambda i: (
                infer(oip_reqs[i % len(oip_reqs)], timeout=60).parameters["batch_size"].int64_param
            ),
        }
        for fn in calls.values():
            for i in range(warmup):
                fn(i)
        for k in callers:
            if k == 1:
                latencies: dict[str, list[float]] = {n: [] for n in calls}
                batches: dict[str, list[int]] = {n: [] for n in calls}
                wall = 0.0
                for i in range(frames):
                    for name in sorted(calls, reverse=bool(i % 2)):
                        t0 = time.perf_counter()
                        batches[name].append(calls[name](i))
                        t1 = time.perf_counter()
                        latencies[name].append(_ms(t0, t1))
                        wall += t1 - t0
            else:
                latencies, batches, wall = _mixed(calls, k, 2 * frames)
            row: dict = {}
            for name, lat in latencies.items():
                s = summary(lat)
                s.update(concurrency=k, fps=round(2 * frames / wall, 1), batch_sizes=histogram(batches[name]))
                row[name] = s
            seg_p50, oip_p50 = row["segment"]["p50"], row["model_infer"]["p50"]
            row["p50_ratio"] = round(oip_p50 / seg_p50, 3) if seg_p50 else None
            out[str(k)] = row
    return out
