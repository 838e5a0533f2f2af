"""Prometheus metrics, on a registry of their own so several servers can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.streams = Gauge("segserve_active_streams", "Open StreamSegment calls", registry=r)

    def bind(self, inflight: Callable[[], float], queue_depth: Callable[[], float]) -> None:
        """Read the in-flight and queue-depth gauges from the live counters at every scrape."""
        self.inflight.set_function(inflight)
        self.queue_depth.set_function(queue_depth)

    def observe_timing(self, timing) -> None:
        for stage in STAGES:
            self.stage_latency.labels(stage).observe(getattr(timing, f"{stage}_us") / 1e6)

    def serve_http(self, port: int, addr: str = "0.0.0.0"):
        """Expose /metrics (``port`` 0: a free one, see ``server.server_port``); returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)
