"""Prometheus metrics, on a registry of their own so several servers can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.2,
    0.5,
    1,
    2.5,
    5,
)
STAGES = ("decode", "queue", "preprocess", "inference", "postprocess", "encode", "total")
# Label values come from closed sets, so no caller can add series: unknown names become "other".
METHODS = frozenset(
    {"Segment", "StreamSegment", "GetModelInfo", "ModelInfer", "ModelStreamInfer", "ModelMetadata"}
)
CODES = frozenset(
    {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
        "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
    }
)  # fmt: skip


def method_label(method: str) -> str:
    """A metrics label for an RPC method name (full "/pkg.Service/Method" or short)."""
    short = method.rsplit("/", 1)[-1]
    return short if short in METHODS else "other"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("segserve_requests", "Frames received", ["method"], registry=r)
        self.errors = Counter(
            "segserve_errors", "Frames answered with an error", ["method", "code"], registry=r
        )
        self.dropped = Counter(
            "segserve_frames_dropped", "Stale frames skipped by latest-policy streams", registry=r
        )
        self.request_latency = Histogram(
            "segserve_request_seconds",
            "Frame latency inside the server",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "segserve_stage_seconds",
            "Per-stage frame latency",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "segserve_batch_size",
            "Frames per engine call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.inflight = Gauge("segserve_inflight_frames", "Frames admitted and not yet processed", registry=r)
        self.queue_depth = Gauge("segserve_queue_depth", "Frames waiting in the batcher", registry=r)
        self.streams = Gauge("segserve_active_streams", "Open streams", registry=r)
        self.buffered_bytes = Gauge(
            "segserve_buffered_bytes", "Admitted request bytes and unwritten answers", registry=r
        )

    def bind(
        self,
        inflight: Callable[[], float],
        queue_depth: Callable[[], float],
        buffered_bytes: Callable[[], float] | None = None,
    ) -> None:
        """Read the gauges from the live counters at every scrape."""
        self.inflight.set_function(inflight)
        self.queue_depth.set_function(queue_depth)
        if buffered_bytes is not None:
            self.buffered_bytes.set_function(buffered_bytes)

    def error(self, method: str, code: str) -> None:
        """Count a refused or failed frame under closed-set labels."""
        self.errors.labels(method_label(method), code if code in CODES else "UNKNOWN").inc()

    def observe_timing(self, timing) -> None:
        for stage in STAGES:
            self.stage_latency.labels(stage).observe(getattr(timing, f"{stage}_us") / 1e6)
