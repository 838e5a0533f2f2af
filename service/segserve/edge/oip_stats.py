"""``ModelStatistics`` for the Open Inference Protocol edge, with Triton's meanings.

Counted per inference request (what Triton calls a request: one ``ModelInfer`` call or one message
on ``ModelStreamInfer``, holding N frames), for the requests this edge served:

- ``success`` / ``fail``: count and wall time in the server, from the request read to its answer built;
- ``queue``: time waiting in the batcher for an engine run;
- ``compute_input``: preparing the model's input: decode, resize, colour conversion, batch stacking;
- ``compute_infer``: the engine run;
- ``compute_output``: mask, overlay and coverage work and their encoding.

A request's N frames run concurrently, so each of its stage durations is the longest of its frames'.
``inference_count`` counts frames; ``execution_count`` and ``batch_stats`` count engine runs, each
frame counted as its share (1 / batch size) of the run it took part in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tritonclient.grpc import service_pb2 as oip

from segserve.types import Timing


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def fill(self, msg: oip.StatisticDuration) -> None:
        msg.count = self.count
        msg.ns = self.ns


@dataclass
class _BatchShare:
    """One engine batch size's runs, accumulated from frames' shares of them."""

    runs: float = 0.0
    input_ns: float = 0.0
    infer_ns: float = 0.0
    output_ns: float = 0.0


def _input_us(t: Timing) -> int:
    return t.decode_us + t.preprocess_us


def _output_us(t: Timing) -> int:
    return t.postprocess_us + t.encode_us


@dataclass
class InferStats:
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    inference_count: int = 0
    executions: float = 0.0
    last_inference_ms: int = 0
    batches: dict[int, _BatchShare] = field(default_factory=dict)

    def succeeded(self, timings: Sequence[Timing], wall_ns: int) -> None:
        """One request answered; ``timings``: its frames'."""
        self.success.add(wall_ns)
        self.queue.add(1000 * max(t.queue_us for t in timings))
        self.compute_input.add(1000 * max(_input_us(t) for t in timings))
        self.compute_infer.add(1000 * max(t.inference_us for t in timings))
        self.compute_output.add(1000 * max(_output_us(t) for t in timings))
        self.inference_count += len(timings)
        self.last_inference_ms = int(time.time() * 1000)
        for t in timings:
            size = max(1, t.batch_size)
            self.executions += 1.0 / size
            share = self.batches.setdefault(size, _BatchShare())
            share.runs += 1.0 / size
            share.input_ns += 1000.0 * _input_us(t) / size
            share.infer_ns += 1000.0 * t.inference_us / size
            share.output_ns += 1000.0 * _output_us(t) / size

    def failed(self, wall_ns: int) -> None:
        self.fail.add(wall_ns)

    def to_proto(self, name: str, version: str) -> oip.ModelStatistics:
        stats = oip.ModelStatistics(
            name=name,
            version=version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=round(self.executions),
        )
        s = stats.inference_stats
        for ours, theirs in (
            (self.success, s.success),
            (self.fail, s.fail),
            (self.queue, s.queue),
            (self.compute_input, s.compute_input),
            (self.compute_infer, s.compute_infer),
            (self.compute_output, s.compute_output),
        ):
            ours.fill(theirs)
        for size in sorted(self.batches):
            share = self.batches[size]
            runs = round(share.runs)
            entry = stats.batch_stats.add(batch_size=size)
            for duration, ns in (
                (entry.compute_input, share.input_ns),
                (entry.compute_infer, share.infer_ns),
                (entry.compute_output, share.output_ns),
            ):
                duration.count = runs
                duration.ns = round(ns)
        return stats
