"""The Open Inference Protocol servicer (KServe v2 gRPC ``inference.GRPCInferenceService``, with
Triton's ``ModelStreamInfer``, ``ModelConfig`` and ``ModelStatistics``): a second thin edge over
``Service``, so Triton and KServe clients get the same batching, limits, auth and metrics as
``segmentation.v1``, on the same port.

It only translates: tensors <-> frames (``oip_tensors``), the model's description (``oip_model``),
statistics (``oip_stats``). Each frame of an ``[N, ...]`` request goes through ``Service.segment``
(unary) or the stream's session on its own, concurrently, so the batcher batches them with every
other caller's frames. Errors are the same gRPC statuses as ``segmentation.v1``; on the stream a bad
request is answered with ``error_message`` ("[request id: ID] STATUS: message", Triton's form) and
the stream goes on. The stubs are ``tritonclient``'s (``tritonclient.grpc.service_pb2``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as oip

import segserve
from segserve.edge import convert
from segserve.edge.oip_model import ModelDescription
from segserve.edge.oip_stats import InferStats
from segserve.edge.oip_tensors import Wanted, fill_response, frames_of, wanted_outputs
from segserve.edge.segmentation import Malformed, deadline_of, lenient
from segserve.edge.streaming import stream_call
from segserve.errors import InvalidFrame, SegserveError, ShuttingDown
from segserve.service import Service
from segserve.sessions import Dropped, FrameFailure, Incoming, Outcome
from segserve.types import FrameRequest, FrameResult, MaskFormat, MaskResolution, OutputOptions, OverlayFormat

log = logging.getLogger(__name__)
SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "segserve"
# Triton's extension names for what this edge does: config and statistics, request parameters.
EXTENSIONS = ("model_configuration", "statistics", "parameters")


class UnknownModel(SegserveError):
    """The request names a model (or version) this server does not serve."""

    status = "NOT_FOUND"


@dataclass
class _Parsed:
    """One inference request, ready for the service: its frames and the outputs it wants."""

    id: str
    wanted: Wanted
    frames: list[FrameRequest]


@dataclass
class _Group:
    """A stream request's place in the answer order, collecting its frames' outcomes."""

    id: str
    size: int
    wanted: Wanted
    started_ns: int
    counted: bool = True  # addressed to the served model: counts in its statistics
    outcomes: list[Outcome] = field(default_factory=list)


def _timeout_deadline(message: oip.ModelInferRequest, deadline: float | None) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) tightens the call's deadline."""
    if "timeout" not in message.parameters:
        return deadline
    param = message.parameters["timeout"]
    us = param.int64_param or param.uint64_param
    if us <= 0:
        return deadline
    own = time.monotonic() + us / 1e6
    return own if deadline is None else min(deadline, own)


async def _segment_all(service: Service, frames: list[FrameRequest], method: str) -> list[FrameResult]:
    """The frames side by side (the batcher batches them); the first failure cancels the rest."""
    if len(frames) == 1:
        return [await service.segment(frames[0], method)]
    tasks = [asyncio.ensure_future(service.segment(frame, method)) for frame in frames]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class InferenceServicer:
    def __init__(self, service: Service):
        self.service = service
        engine = service.engine
        self.model = ModelDescription.of(
            engine.metadata, service.max_batch, service.limits.max_delay_ms, engine.device
        )
        self.stats = InferStats()

    # --- helpers ---------------------------------------------------------------------------------
    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, error: SegserveError) -> None:
        self.service.metrics.error(method, error.status)
        await context.abort(convert.status_code(error), str(error))

    def _check_model(self, name: str, version: str) -> None:
        if not self.model.matches(name, version):
            shown = f"{name[:64]!r}" + (f" version {version[:16]!r}" if version else "")
            raise UnknownModel(
                f"unknown model {shown}: this server serves {self.model.name!r} "
                f"version {self.model.version!r}"
            )

    def _parse(self, message: object, deadline: float | None) -> _Parsed:
        """Raises InvalidFrame/InvalidOptions/UnknownModel for a request that cannot run."""
        if isinstance(message, Malformed):
            raise InvalidFrame(message.reason)
        assert isinstance(message, oip.ModelInferRequest)
        self._check_model(message.model_name, message.model_version)
        self.service.check_frame_id(message.id)
        wanted = wanted_outputs(message)
        frames = frames_of(message, (self.model.height, self.model.width), self.model.max_batch)
        options = OutputOptions(
            mask=MaskFormat.NONE,
            mask_resolution=MaskResolution.MODEL,
            overlay=OverlayFormat.JPEG if wanted.overlay else OverlayFormat.NONE,
            coverage=wanted.coverage,
        )
        deadline = _timeout_deadline(message, deadline)
        requests = [
            FrameRequest(
                frame_id=message.id,
                encoded=frame if isinstance(frame, bytes) else None,
                raw=None if isinstance(frame, bytes) else frame,
                options=options,
                deadline=deadline,
            )
            for frame in frames
        ]
        return _Parsed(message.id, wanted, requests)

    def _response(
        self,
        request_id: str,
        results: list[FrameResult],
        wanted: Wanted,
        into: oip.ModelInferResponse | None = None,
    ) -> oip.ModelInferResponse:
        """The answer, filled ``into`` a message in place when given (a sub-message handed to a
        constructor is copied field by field: milliseconds for image-sized tensors)."""
        response = oip.ModelInferResponse() if into is None else into
        response.model_name, response.model_version, response.id = (
            self.model.name,
            self.model.version,
            request_id,
        )
        return fill_response(response, results, wanted, self.model.class_ids)

    # --- health and description ------------------------------------------------------------------
    async def ServerLive(self, request: object, context: grpc.aio.ServicerContext) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self.service.serving)

    async def ModelReady(self, request: object, context: grpc.aio.ServicerContext) -> oip.ModelReadyResponse:
        if isinstance(request, Malformed):
            await self._refuse(context, "ModelReady", InvalidFrame(request.reason))
        assert isinstance(request, oip.ModelReadyRequest)
        return oip.ModelReadyResponse(
            ready=self.model.matches(request.name, request.version) and self.service.serving
        )

    async def ServerMetadata(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(
            name=SERVER_NAME, version=segserve.__version__, extensions=EXTENSIONS
        )

    async def _described(self, method: str, request: object, context: grpc.aio.ServicerContext) -> None:
        """Refuses a malformed request or one for another model."""
        try:
            if isinstance(request, Malformed):
                raise InvalidFrame(request.reason)
            self._check_model(request.name, request.version)  # type: ignore[attr-defined]
        except SegserveError as exc:
            await self._refuse(context, method, exc)

    async def ModelMetadata(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        await self._described("ModelMetadata", request, context)
        return self.model.metadata()

    async def ModelConfig(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> oip.ModelConfigResponse:
        await self._described("ModelConfig", request, context)
        return self.model.config()

    async def ModelStatistics(
        self, request: object, context: grpc.aio.ServicerContext
    ) -> oip.ModelStatisticsResponse:
        if isinstance(request, Malformed) or request.name or request.version:  # type: ignore[attr-defined]
            await self._described("ModelStatistics", request, context)  # no name: every model (ours)
        return oip.ModelStatisticsResponse(
            model_stats=[self.stats.to_proto(self.model.name, self.model.version)]
        )

    # --- inference -------------------------------------------------------------------------------
    async def ModelInfer(self, request: object, context: grpc.aio.ServicerContext) -> oip.ModelInferResponse:
        method = "ModelInfer"
        started = time.perf_counter_ns()
        try:
            parsed = self._parse(request, deadline_of(context))
        except SegserveError as exc:
            self.service.metrics.requests.labels(method).inc()
            if not isinstance(exc, UnknownModel):
                self.stats.failed(time.perf_counter_ns() - started)
            await self._refuse(context, method, exc)
            raise  # unreachable: abort raises
        self.service.metrics.requests.labels(method).inc(len(parsed.frames))
        try:
            results = await _segment_all(self.service, parsed.frames, method)
        except SegserveError as exc:  # counted in the metrics by the service
            self.stats.failed(time.perf_counter_ns() - started)
            await context.abort(convert.status_code(exc), str(exc))
            raise
        response = self._response(parsed.id, results, parsed.wanted)
        self.stats.succeeded([r.timing for r in results], time.perf_counter_ns() - started)
        return response

    def _stream_items(
        self, message: object, deadline: float | None, method: str
    ) -> tuple[_Group, list[Incoming]]:
        """A stream message as its answer group and the items the session takes: its frames, or one
        failure standing for the whole request."""
        started = time.perf_counter_ns()
        try:
            parsed = self._parse(message, deadline)
        except SegserveError as exc:
            self.service.metrics.error(method, exc.status)
            raw_id = str(getattr(message, "id", ""))
            cut = raw_id.encode()[: self.service.limits.max_frame_id_bytes].decode("utf-8", "ignore")
            group = _Group(cut, 1, Wanted(), started, counted=not isinstance(exc, UnknownModel))
            return group, [FrameFailure(cut, exc)]
        return _Group(parsed.id, len(parsed.frames), parsed.wanted, started), list(parsed.frames)

    def _stream_response(self, group: _Group) -> oip.ModelStreamInferResponse:
        wall = time.perf_counter_ns() - group.started_ns
        bad = next((o for o in group.outcomes if not isinstance(o, FrameResult)), None)
        if bad is not None:
            if group.counted:
                self.stats.failed(wall)
            error = bad.error if isinstance(bad, FrameFailure) else SegserveError("frame dropped")
            return oip.ModelStreamInferResponse(
                error_message=f"[request id: {group.id}] {error.status}: {error}",
                infer_response=oip.ModelInferResponse(
                    model_name=self.model.name, model_version=self.model.version, id=group.id
                ),
            )
        results = [o for o in group.outcomes if isinstance(o, FrameResult)]
        self.stats.succeeded([r.timing for r in results], wall)
        stream = oip.ModelStreamInferResponse()
        self._response(group.id, results, group.wanted, into=stream.infer_response)
        return stream

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[object], context: grpc.aio.ServicerContext
    ):
        method = "ModelStreamInfer"
        async with stream_call(self.service, context, method) as session:
            deadline = deadline_of(context)
            groups: deque[_Group] = deque()

            async def incoming() -> AsyncIterator[Incoming]:
                async for message in request_iterator:
                    group, items = self._stream_items(message, deadline, method)
                    del message
                    groups.append(group)  # before its items: their outcomes find it at the front
                    items.reverse()
                    while items:  # popped as yielded: a waiting generator keeps no frame
                        yield items.pop()

            async for outcome in session.run(incoming()):
                group = groups[0]
                group.outcomes.append(outcome)
                if isinstance(outcome, Dropped):  # not with the queue policy; never leave a gap
                    log.warning("stream frame %r dropped", outcome.frame_id[:64])
                if len(group.outcomes) == group.size:
                    groups.popleft()
                    await context.write(self._stream_response(group))
            while groups:  # a drain stopped the reading inside a request's frames
                group = groups.popleft()
                group.outcomes.append(FrameFailure(group.id, ShuttingDown("server is shutting down")))
                await context.write(self._stream_response(group))


def _unary(fn: Callable, request: type[Any], response: type[Any]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=lenient(request.FromString), response_serializer=response.SerializeToString
    )


def install(service: Service, server: grpc.aio.Server) -> tuple[str, ...]:
    """Register the servicer on ``server`` (an ``EXTRA_EDGES`` installer); the methods it does not
    implement (repository, shared memory, trace, logging) answer UNIMPLEMENTED."""
    s = InferenceServicer(service)
    handlers = {
        "ServerLive": _unary(s.ServerLive, oip.ServerLiveRequest, oip.ServerLiveResponse),
        "ServerReady": _unary(s.ServerReady, oip.ServerReadyRequest, oip.ServerReadyResponse),
        "ModelReady": _unary(s.ModelReady, oip.ModelReadyRequest, oip.ModelReadyResponse),
        "ServerMetadata": _unary(s.ServerMetadata, oip.ServerMetadataRequest, oip.ServerMetadataResponse),
        "ModelMetadata": _unary(s.ModelMetadata, oip.ModelMetadataRequest, oip.ModelMetadataResponse),
        "ModelConfig": _unary(s.ModelConfig, oip.ModelConfigRequest, oip.ModelConfigResponse),
        "ModelStatistics": _unary(s.ModelStatistics, oip.ModelStatisticsRequest, oip.ModelStatisticsResponse),
        "ModelInfer": _unary(s.ModelInfer, oip.ModelInferRequest, oip.ModelInferResponse),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            s.ModelStreamInfer,
            request_deserializer=lenient(oip.ModelInferRequest.FromString),
            response_serializer=oip.ModelStreamInferResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    return (SERVICE_NAME,)
