"""The segmentation.v1 servicer: a thin grpc.aio translation over ``Service``.

Nothing here decides how frames are processed: it parses (leniently: a malformed message is an
INVALID_ARGUMENT, not grpc's INTERNAL), converts to ``segserve.types``, calls the service and maps
``SegserveError`` to status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc

from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve.edge import convert
from segserve.edge.streaming import stream_call
from segserve.errors import InvalidFrame, SegserveError, StreamIdle
from segserve.service import Service
from segserve.sessions import FrameFailure, Incoming

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name


class Malformed:
    """Stands for a request message that could not be parsed."""

    frame_id = ""

    def __init__(self, reason: str):
        self.reason = reason


def lenient(parse: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A request parser that turns a malformed message into ``Malformed``."""

    def deserialize(data: bytes) -> object:
        try:
            return parse(data)
        except Exception as exc:
            return Malformed(f"malformed request message: {type(exc).__name__}")

    return deserialize


def _empty_message(data: bytes) -> object:
    """GetModelInfoRequest has no fields: anything but an empty message is a caller's mistake."""
    if data:
        return Malformed(f"GetModelInfoRequest has no fields, got {len(data)} bytes")
    return pb.GetModelInfoRequest()


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class SegmenterServicer:
    def __init__(self, service: Service, model_info: pb.ModelInfo):
        self.service = service
        self.model_info = model_info

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str, error: SegserveError) -> None:
        self.service.metrics.error(method, error.status)
        await context.abort(convert.status_code(error), str(error))

    async def GetModelInfo(self, request: object, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        if isinstance(request, Malformed):
            await self._refuse(context, "GetModelInfo", InvalidFrame(request.reason))
        return self.model_info

    async def Segment(self, request: object, context: grpc.aio.ServicerContext) -> pb.SegmentResponse:
        method = "Segment"
        self.service.metrics.requests.labels(method).inc()
        try:
            if isinstance(request, Malformed):
                raise InvalidFrame(request.reason)
            assert isinstance(request, pb.SegmentRequest)
            frame = convert.request_from_proto(request)
            frame.deadline = deadline_of(context)
        except SegserveError as exc:
            await self._refuse(context, method, exc)
            raise  # unreachable: abort raises
        try:
            result = await self.service.segment(frame, method)
        except SegserveError as exc:
            await context.abort(convert.status_code(exc), str(exc))
            raise
        return convert.response_from_result(result)

    def _incoming(self, message: object, deadline: float | None, method: str) -> Incoming:
        """One stream message as the session takes it: a frame request, or the frame's failure."""
        frame_id = str(getattr(message, "frame_id", ""))
        try:
            if isinstance(message, Malformed):
                raise InvalidFrame(message.reason)
            assert isinstance(message, pb.SegmentRequest)
            self.service.check_frame_id(frame_id)
            request = convert.request_from_proto(message)
        except SegserveError as exc:
            self.service.metrics.error(method, exc.status)
            cut = frame_id.encode()[: self.service.limits.max_frame_id_bytes].decode("utf-8", "ignore")
            return FrameFailure(cut, exc, int(getattr(message, "capture_time_us", 0)))
        request.deadline = deadline
        return request

    async def StreamSegment(self, request_iterator: AsyncIterator[object], context: grpc.aio.ServicerContext):
        method = "StreamSegment"
        idle_s = self.service.limits.stream_idle_s
        async with stream_call(self.service, context, method) as session:
            deadline = deadline_of(context)
            messages = aiter(request_iterator)
            # as every later frame: not read while the byte budget has no room (32 streams opening
            # with raw 1080p frames would otherwise each hold one, ~700 MB, before any is admitted)
            await self.service.admission.room()
            try:  # the first frame carries the stream's policy
                first = await asyncio.wait_for(anext(messages), idle_s or None)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise StreamIdle(f"no frame for {idle_s:g}s: stream closed") from None
            if isinstance(first, pb.SegmentRequest):
                with contextlib.suppress(SegserveError):  # the frame itself is answered with the error
                    session.set_policy(convert.stream_policy(first))
            pending = [self._incoming(first, deadline, method)]
            del first  # hold no message longer than its frame needs

            async def incoming() -> AsyncIterator[Incoming]:
                # popped as it is yielded: a generator waiting for its next read (the stream may
                # wait for room in the byte budget) keeps neither the last message nor its frame
                yield pending.pop()
                async for message in messages:
                    pending.append(self._incoming(message, deadline, method))
                    del message
                    yield pending.pop()

            async for outcome in session.run(incoming()):
                # serialized here, so the message is gone before the write waits on a slow reader
                await context.write(convert.response_from_outcome(outcome).SerializeToString())


def _already_serialized(message: bytes) -> bytes:
    """StreamSegment writes its answers as bytes (see the handler)."""
    return message


def add_servicer(servicer: SegmenterServicer, server: grpc.aio.Server) -> None:
    """Like the generated ``add_SegmenterServicer_to_server``, with lenient request parsing."""
    handlers = {
        "Segment": grpc.unary_unary_rpc_method_handler(
            servicer.Segment,
            request_deserializer=lenient(pb.SegmentRequest.FromString),
            response_serializer=pb.SegmentResponse.SerializeToString,
        ),
        "StreamSegment": grpc.stream_stream_rpc_method_handler(
            servicer.StreamSegment,
            request_deserializer=lenient(pb.SegmentRequest.FromString),
            response_serializer=_already_serialized,
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo,
            request_deserializer=_empty_message,
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
