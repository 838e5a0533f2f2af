"""The gRPC server: a thin servicer over the pipeline, health, reflection, auth, metrics, drain.

Nothing here decides how frames are processed; it translates protobuf <-> pipeline dataclasses,
admits work within the configured bounds and maps SegserveError to gRPC status codes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from segserve import protocol
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.admission import Admission
from segserve.auth import TokenAuthInterceptor, server_credentials
from segserve.batcher import Batcher
from segserve.codec import Limits
from segserve.engine import Engine, EngineConfig
from segserve.errors import SegserveError
from segserve.metrics import Metrics
from segserve.pipeline import FrameRequest, Pipeline
from segserve.streams import Malformed, StreamLimits, StreamSession

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set for mutual TLS


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 50051
    max_message_bytes: int = 64 * 1024 * 1024  # a 4K raw frame is 24.9 MB
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
    stream_idle_s: float = 30.0  # a stream that sends nothing for this long is closed
    max_frame_id_bytes: int = 256
    max_buffered_bytes: int = 256 * 1024 * 1024  # requests and unwritten responses, all callers
    max_stream_buffered_bytes: int = 32 * 1024 * 1024  # unwritten responses of one stream
    limits: Limits = field(default_factory=Limits)


def _code(exc: SegserveError) -> grpc.StatusCode:
    return grpc.StatusCode[exc.status]


class Service:
    """Engine + batcher + pipeline + admission: everything a server needs, without grpc wiring."""

    def __init__(self, engine: Engine, config: ServerConfig, metrics: Metrics | None = None):
        self.engine = engine
        self.config = config
        self.metrics = metrics or Metrics()
        self.batcher = Batcher(
            engine.run,
            max_batch=min(config.max_batch, engine.max_batch)
            if engine.metadata.dynamic_batch
            else config.max_batch,
            max_delay_s=config.max_delay_ms / 1000.0,
            max_queue=config.max_inflight,
            on_batch=self.metrics.batch_size.observe,
        )
        self.pipeline = Pipeline(engine.metadata, self.batcher, config.limits, engine.resize_in_graph)
        self.admission = Admission(config.max_inflight)
        self.streams = Admission(config.max_streams)
        self.pool = ThreadPoolExecutor(max_workers=config.max_inflight, thread_name_prefix="segserve-frame")
        self.metrics.bind(inflight=lambda: self.admission.in_use, queue_depth=lambda: self.batcher.depth)
        self.draining = threading.Event()
        self._sessions: set[StreamSession] = set()
        self._sessions_lock = threading.Lock()

    @classmethod
    def from_model(cls, engine_config: EngineConfig, config: ServerConfig) -> Service:
        engine = Engine(engine_config)
        engine.warm_up()
        return cls(engine, config)

    def model_info(self) -> pb.ModelInfo:
        return protocol.model_info_to_proto(
            self.engine.metadata, self.engine.providers, self.batcher.max_batch, self.engine.sha256
        )

    def process(self, request: FrameRequest, method: str) -> pb.SegmentResponse:
        """Process one admitted frame. Raises SegserveError (an unexpected failure becomes INTERNAL)."""
        metrics = self.metrics
        fields = {"frame_id": _short(request.frame_id), "method": method}
        try:
            result = self.pipeline.process(request)
            response = protocol.response_from_result(result)
        except SegserveError as exc:
            metrics.errors.labels(method, exc.status).inc()
            log.info("frame refused: %s %s", exc.status, exc, extra={**fields, "code": exc.status})
            raise
        except Exception as exc:
            metrics.errors.labels(method, "INTERNAL").inc()
            log.exception("frame failed", extra={**fields, "code": "INTERNAL"})
            raise SegserveError(f"internal error: {type(exc).__name__}") from exc
        metrics.request_latency.labels(method).observe(result.timing.total_us / 1e6)
        metrics.observe_timing(result.timing)
        return response

    def answer(self, request: FrameRequest, method: str) -> pb.SegmentResponse:
        """Like ``process`` but a failure becomes the frame's error response (for streams)."""
        try:
            return self.process(request, method)
        except SegserveError as exc:
            return protocol.error_response(
                request.frame_id, _code(exc).value[0], str(exc), request.capture_time_us
            )

    def begin_drain(self) -> None:
        self.draining.set()
        with self._sessions_lock:
            for session in self._sessions:
                session.stop_accepting()

    def wait_idle(self, until: float, poll_s: float = 0.02) -> bool:
        """Wait (to ``time.monotonic()`` ``until``) for no open stream and no admitted frame."""
        while True:
            with self._sessions_lock:
                busy = bool(self._sessions) or self.admission.in_use > 0
            if not busy:
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(poll_s)

    def register(self, session: StreamSession) -> None:
        with self._sessions_lock:
            self._sessions.add(session)
            if self.draining.is_set():
                session.stop_accepting()
        self.metrics.streams.inc()

    def unregister(self, session: StreamSession) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)
        self.metrics.streams.dec()

    def close(self, timeout: float = 30.0) -> None:
        self.batcher.close(drain=True, timeout=timeout)
        self.pool.shutdown(wait=True)
        self.pipeline.close()


def _short(frame_id: str, limit: int = 128) -> str:
    """A client-chosen frame id, cut to a length that cannot flood the logs."""
    return frame_id if len(frame_id) <= limit else frame_id[:limit] + "..."


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class SegmenterServicer(pb_grpc.SegmenterServicer):
    def __init__(self, service: Service):
        self.service = service

    def _refuse(
        self, context: grpc.ServicerContext, method: str, code: grpc.StatusCode, message: str
    ) -> None:
        self.service.metrics.errors.labels(method, code.name).inc()
        context.abort(code, message)

    def _refuse_when_draining(self, context: grpc.ServicerContext, method: str) -> None:
        if self.service.draining.is_set():
            self._refuse(
                context,
                method,
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down; retry on another instance",
            )

    def GetModelInfo(self, request, context):
        return self.service.model_info()

    def Segment(
        self, request: pb.SegmentRequest | Malformed, context: grpc.ServicerContext
    ) -> pb.SegmentResponse:
        self._refuse_when_draining(context, "Segment")
        service = self.service
        service.metrics.requests.labels("Segment").inc()
        if isinstance(request, Malformed):
            self._refuse(context, "Segment", grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        try:
            frame = protocol.request_from_proto(request)
        except SegserveError as exc:
            self._refuse(context, "Segment", _code(exc), str(exc))
        if not service.admission.try_acquire():
            self._refuse(
                context,
                "Segment",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server busy: {service.admission.limit} frames in flight; retry with backoff",
            )
        try:
            frame.deadline = _deadline(context)
            frame.is_cancelled = lambda: not context.is_active()
            response = service.process(frame, "Segment")
        except SegserveError as exc:
            error = exc
        else:
            return response
        finally:
            service.admission.release()
        context.abort(_code(error), str(error))

    def StreamSegment(self, request_iterator, context: grpc.ServicerContext):
        self._refuse_when_draining(context, "StreamSegment")
        service = self.service
        if not service.streams.try_acquire():
            self._refuse(
                context,
                "StreamSegment",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many open streams (limit {service.streams.limit}); retry with backoff",
            )
        try:
            session = StreamSession(
                run=service.answer,
                pool=service.pool,
                admission=service.admission,
                limits=StreamLimits(service.config.max_inflight_per_stream),
                deadline=_deadline(context),
                on_dropped=service.metrics.dropped.inc,
                on_request=service.metrics.requests.labels("StreamSegment").inc,
                on_error=lambda code: service.metrics.errors.labels("StreamSegment", code).inc(),
            )
            context.add_callback(session.cancel)
            service.register(session)
        except BaseException:
            service.streams.release()
            raise
        try:
            reader = threading.Thread(
                target=session.read, args=(request_iterator,), name="segserve-stream-reader", daemon=True
            )
            reader.start()
            yield from session.responses()
            if service.draining.is_set() and not session.completed and not session.cancelled.is_set():
                service.metrics.errors.labels("StreamSegment", "UNAVAILABLE").inc()
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("server is shutting down: every accepted frame was answered; reconnect")
        finally:
            session.cancel()  # stops the reader and a latest-policy dispatcher if still waiting
            service.unregister(session)
            service.streams.release()


def _lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A request parser that turns a malformed message into ``Malformed`` (answered INVALID_ARGUMENT)
    instead of grpc's own INTERNAL "Exception deserializing request!"."""

    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except Exception as exc:
            return Malformed(f"malformed request message: {type(exc).__name__}")

    return deserialize


def add_servicer(servicer: SegmenterServicer, server: grpc.Server) -> None:
    """Like the generated ``add_SegmenterServicer_to_server``, with lenient request parsing."""
    handlers = {
        "Segment": grpc.unary_unary_rpc_method_handler(
            servicer.Segment,
            request_deserializer=_lenient(pb.SegmentRequest.FromString),
            response_serializer=pb.SegmentResponse.SerializeToString,
        ),
        "StreamSegment": grpc.stream_stream_rpc_method_handler(
            servicer.StreamSegment,
            request_deserializer=_lenient(pb.SegmentRequest.FromString),
            response_serializer=pb.SegmentResponse.SerializeToString,
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo,
            request_deserializer=_lenient(pb.GetModelInfoRequest.FromString),  # the request has no fields
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    service: Service
    health: health.HealthServicer
    metrics_http: object | None = None

    def drain_and_stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, answer what was accepted, stop.

        Returns within about ``grace_s``: calls still open then are cancelled."""
        grace = self.service.config.grace_s if grace_s is None else grace_s
        start = time.monotonic()
        log.info("draining: health NOT_SERVING, refusing new calls, %.1fs grace", grace)
        self.health.enter_graceful_shutdown()
        self.service.begin_drain()
        end = start + grace
        # Health answers NOT_SERVING and new calls UNAVAILABLE while accepted frames finish; then
        # the listener closes and whatever is still open at the end of the grace is cancelled.
        idle = self.service.wait_idle(end)
        self.server.stop(max(0.0, end - time.monotonic())).wait(grace + 1)
        log.info("drain %s", "complete: every accepted frame answered" if idle else "grace expired")
        self.service.close(timeout=max(0.5, grace - (time.monotonic() - start)))
        if self.metrics_http is not None:
            self.metrics_http[0].shutdown()
            self.metrics_http[0].server_close()
        log.info("stopped after %.2fs", time.monotonic() - start)

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_http is None else self.metrics_http[0].server_port


def create_server(service: Service, config: ServerConfig | None = None) -> RunningServer:
    """Build and start a server for ``service``; ``config.port`` 0 picks a free port."""
    config = config or service.config
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),  # find dead peers so a vanished reader frees its stream
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]
    interceptors = (
        [
            TokenAuthInterceptor(
                config.token, on_deny=lambda method, code: service.metrics.errors.labels(method, code).inc()
            )
        ]
        if config.token
        else []
    )
    rpc_threads = config.max_streams + config.max_inflight + 8
    server = grpc.server(
        ThreadPoolExecutor(max_workers=rpc_threads, thread_name_prefix="segserve-rpc"),
        options=options,
        interceptors=interceptors,
        maximum_concurrent_rpcs=rpc_threads,
    )
    add_servicer(SegmenterServicer(service), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{config.host}:{config.port}"
    if config.tls is not None:
        port = server.add_secure_port(
            address, server_credentials(config.tls.cert, config.tls.key, config.tls.client_ca)
        )
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    metrics_http = (
        service.metrics.serve_http(config.metrics_port, config.host)
        if config.metrics_port is not None
        else None
    )
    if metrics_http is not None:
        log.info("metrics on http://%s:%d/metrics", config.host, metrics_http[0].server_port)
    log.info(
        "serving %s on %s (pid %d, providers %s, tls %s, auth %s)",
        service.pipeline.model_id,
        f"{config.host}:{port}",
        os.getpid(),
        service.engine.providers,
        "on" if config.tls else "off",
        "token" if config.token else "off",
    )
    return RunningServer(server, port, service, health_servicer, metrics_http)
