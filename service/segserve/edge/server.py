"""The server factory: one grpc.aio server with every edge, health, reflection, auth, metrics, drain.

``start(engine, config)`` runs inside an event loop (the CLI's ``serve``); ``create_server`` runs the
same in a loop thread of its own and returns a handle that plain code and tests can stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from segserve.codec import Limits
from segserve.edge import convert
from segserve.edge.auth import TokenAuthInterceptor, server_credentials
from segserve.edge.metrics_http import MetricsListener, serve_metrics
from segserve.edge.oip import install as install_oip
from segserve.edge.segmentation import SERVICE_NAME, SegmenterServicer, add_servicer
from segserve.engine import Engine
from segserve.metrics import Metrics
from segserve.service import Service, ServiceLimits

log = logging.getLogger(__name__)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set for mutual TLS


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    max_message_bytes: int = 65 * 1024 * 1024  # the largest frame and a little more
    max_inflight: int = 32  # frames admitted and not yet answered, all callers together
    max_streams: int = 32
    max_inflight_per_stream: int = 4
    max_batch: int = 8
    max_delay_ms: float = 2.0
    grace_s: float = 10.0
    token: str | None = None
    tls: TlsConfig | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # /metrics stays on loopback unless asked (0.0.0.0 in k8s)
    max_metrics_connections: int = 16
    metrics_idle_s: float = 10.0
    stream_idle_s: float = 30.0  # a stream with no progress for this long is closed
    max_frame_id_bytes: int = 256
    max_buffered_bytes: int = 128 * 1024 * 1024  # admitted requests + unwritten answers, all callers
    max_stream_buffered_bytes: int = 4 * 1024 * 1024  # unwritten answers of one stream
    limits: Limits = field(default_factory=Limits)

    def service_limits(self) -> ServiceLimits:
        return ServiceLimits(
            max_inflight=self.max_inflight,
            max_buffered_bytes=self.max_buffered_bytes,
            max_streams=self.max_streams,
            max_inflight_per_stream=self.max_inflight_per_stream,
            max_stream_buffered_bytes=self.max_stream_buffered_bytes,
            stream_idle_s=self.stream_idle_s,
            max_frame_id_bytes=self.max_frame_id_bytes,
            max_batch=self.max_batch,
            max_delay_ms=self.max_delay_ms,
            frame=self.limits,
        )


# Extra front doors (the Open Inference Protocol) register here: (service, server) -> service names.
EdgeInstaller = Callable[[Service, grpc.aio.Server], tuple[str, ...]]
EXTRA_EDGES: list[EdgeInstaller] = [install_oip]


@dataclass
class Server:
    """A started server inside its event loop."""

    grpc_server: grpc.aio.Server
    port: int
    service: Service
    health: health.aio.HealthServicer
    config: ServerConfig
    metrics_listener: MetricsListener | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_listener is None else self.metrics_listener.port

    async def drain_and_stop(self, grace_s: float | None = None) -> bool:
        """NOT_SERVING, refuse new calls, answer what was accepted, stop; all within ``grace_s``.

        Returns True when every accepted frame was answered before the grace ran out."""
        if self.stopped.is_set():
            return True
        grace = self.config.grace_s if grace_s is None else grace_s
        start = time.monotonic()
        log.info("draining: health NOT_SERVING, refusing new calls, %.1fs grace", grace)
        await self.health.enter_graceful_shutdown()
        self.service.begin_drain()
        idle = await self.service.wait_idle(grace)
        await self.grpc_server.stop(max(0.0, grace - (time.monotonic() - start)))
        await self.service.close()
        if self.metrics_listener is not None:
            await self.metrics_listener.close()
        elapsed = time.monotonic() - start
        log.info(
            "drain %s; stopped after %.2fs",
            "complete: every accepted frame answered" if idle else "cut at the grace period",
            elapsed,
            extra={"drain": "complete" if idle else "cut", "stopped_after_s": round(elapsed, 3)},
        )
        self.stopped.set()
        return idle


STREAM_WINDOW_BYTES = 1 << 20


def _options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),  # find dead peers so a vanished reader frees its stream
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
        # A fixed receive window per stream, no growth (BDP probing off): a 1080p camera JPEG
        # (200-500 KB) arrives in one flight instead of waiting on window updates (64 KiB, the
        # default, cost 0.3-1 ms a call, more under load), and a stream that stops being read
        # (its bounds are full) holds at most STREAM_WINDOW_BYTES in grpc's buffers.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
        # After 5 minutes a connection is told to go away (GOAWAY); its open streams go on (no age
        # grace limit) while new calls re-resolve, so clients find replicas a scale-up added.
        ("grpc.max_connection_age_ms", 300_000),
    ]


async def start(engine: Engine, config: ServerConfig, metrics: Metrics | None = None) -> Server:
    """Build and start a server in the running loop; ``config.port`` 0 picks a free port."""
    service = await Service.start(engine, config.service_limits(), metrics)
    interceptors = [TokenAuthInterceptor(config.token, on_deny=service.metrics.error)] if config.token else []
    grpc_server = grpc.aio.server(options=_options(config), interceptors=interceptors)
    info = convert.model_info_to_proto(
        engine.metadata,
        engine.providers,
        service.max_batch,
        engine.sha256,
        engine.decode_device,
        engine.decode_note,
    )
    add_servicer(SegmenterServicer(service, info), grpc_server)
    names = [SERVICE_NAME]
    for install in EXTRA_EDGES:
        names.extend(install(service, grpc_server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    reflection.enable_server_reflection((*names, HEALTH_SERVICE, reflection.SERVICE_NAME), grpc_server)
    address = f"{config.host}:{config.port}"
    try:
        if config.tls is not None:
            creds = server_credentials(config.tls.cert, config.tls.key, config.tls.client_ca)
            port = grpc_server.add_secure_port(address, creds)
        else:
            port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc says "Failed to bind to address"
        await service.close()
        raise OSError(f"could not bind {address}: is another server on that port? ({exc})") from None
    if port == 0:
        await service.close()
        raise OSError(f"could not bind {address}")
    await grpc_server.start()
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    loop = asyncio.get_running_loop()
    background: set[asyncio.Task[None]] = set()

    def not_serving() -> None:
        log.error("health NOT_SERVING: the inference worker failed")
        for name in ("", *names):
            task = loop.create_task(health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))
            background.add(task)
            task.add_done_callback(background.discard)

    service.failure_listeners.append(not_serving)
    listener = None
    if config.metrics_port is not None:
        listener = await serve_metrics(
            service.metrics.registry,
            config.metrics_host,
            config.metrics_port,
            config.max_metrics_connections,
            config.metrics_idle_s,
        )
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, listener.port)
    log.info(
        "serving %s on %s:%d (pid %d, providers %s, tls %s, auth %s)",
        service.model_id,
        config.host,
        port,
        os.getpid(),
        engine.providers,
        "on" if config.tls else "off",
        "token" if config.token else "off",
    )
    return Server(grpc_server, port, service, health_servicer, config, listener)


class RunningServer:
    """A server on an event loop in a thread of its own: for tests, benchmarks and embedding."""

    def __init__(self, engine: Engine, config: ServerConfig, metrics: Metrics | None = None):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="segserve-loop", daemon=True)
        self._thread.start()
        try:
            self.server: Server = self.call(start(engine, config, metrics))
        except BaseException:
            self._stop_loop()
            raise

    def call(self, coro, timeout: float | None = None):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def service(self) -> Service:
        return self.server.service

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    def drain_and_stop(self, grace_s: float | None = None) -> bool:
        """Drain and stop (see ``Server.drain_and_stop``); a second call returns at once."""
        if not self.loop.is_running():
            return True
        try:
            return self.call(self.server.drain_and_stop(grace_s))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def create_server(engine: Engine, config: ServerConfig, metrics: Metrics | None = None) -> RunningServer:
    return RunningServer(engine, config, metrics)


async def serve_until_signalled(
    engine: Engine, config: ServerConfig, on_ready: Callable[[Server], None] | None = None
) -> bool:
    """Serve until SIGTERM or SIGINT, then drain within the grace period. The signal handlers run
    on the event loop, so a signal is never lost however busy the workers are."""
    import signal

    server = await start(engine, config)
    if on_ready is not None:
        on_ready(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    return await server.drain_and_stop()
