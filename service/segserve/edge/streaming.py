"""A streaming call's life on either edge: open a session, end it with the right status.

Both front doors (segmentation.v1 ``StreamSegment`` and the Open Inference Protocol's
``ModelStreamInfer``) use ``stream_call``, so stream limits, the idle timer and draining answer the
same way on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from segserve.edge import convert
from segserve.errors import SegserveError, StreamIdle
from segserve.service import Service
from segserve.sessions import StreamSession

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def stream_call(
    service: Service, context: grpc.aio.ServicerContext, method: str
) -> AsyncIterator[StreamSession]:
    """A session for this call (refused with its status when no stream is taken). On exit: a drain
    ends the call UNAVAILABLE once everything accepted was answered (clients move to another
    replica), no progress for ``--stream-idle-s`` ends it DEADLINE_EXCEEDED."""
    try:
        session = service.open_stream("queue", method)
    except SegserveError as exc:
        service.metrics.error(method, exc.status)
        await context.abort(convert.status_code(exc), str(exc))
        raise  # unreachable: abort raises
    handler = asyncio.current_task()
    # the idle timer cancels the handler: a write stuck on a client that does not read ends too
    session.on_idle = handler.cancel if handler is not None else None
    try:
        yield session
        if session.end_reason == "draining":
            service.metrics.error(method, "UNAVAILABLE")
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            context.set_details("server is shutting down: every accepted frame was answered; reconnect")
    except StreamIdle as exc:
        service.metrics.error(method, exc.status)
        context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
        context.set_details(str(exc))
    except asyncio.CancelledError:
        if session.end_reason == "idle":
            service.metrics.error(method, "DEADLINE_EXCEEDED")
        raise
    except Exception as exc:  # the request stream failed: what was read is answered, then INTERNAL
        log.exception("%s failed", method)
        service.metrics.error(method, "INTERNAL")
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details(f"internal error: {type(exc).__name__}")
    finally:
        service.close_stream(session)
