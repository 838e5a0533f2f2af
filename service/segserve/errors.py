"""The service's error family. Each error names the gRPC status it maps to, so code below the
server never imports grpc, and the server translates with one lookup."""

from __future__ import annotations


class SegserveError(Exception):
    """Base of all errors the service reports to callers; ``status`` is a grpc.StatusCode name."""

    status = "INTERNAL"


class InvalidFrame(SegserveError):
    """The frame cannot be decoded or its fields are inconsistent."""

    status = "INVALID_ARGUMENT"


class InvalidOptions(SegserveError):
    """An output option is unknown or out of range."""

    status = "INVALID_ARGUMENT"


class FrameTooLarge(SegserveError):
    """The frame is over the configured byte or pixel limit."""

    status = "RESOURCE_EXHAUSTED"


class Overloaded(SegserveError):
    """The admission queue is full; retry later or slow down."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(SegserveError):
    """The caller's deadline passed before the frame could run."""

    status = "DEADLINE_EXCEEDED"


class Cancelled(SegserveError):
    """The caller went away before the frame ran."""

    status = "CANCELLED"


class ShuttingDown(SegserveError):
    """The server is draining and accepts no new work."""

    status = "UNAVAILABLE"


class ModelError(SegserveError):
    """The model cannot be loaded or does not fit the served contract."""

    status = "FAILED_PRECONDITION"


class Unavailable(SegserveError):
    """This replica cannot serve now (its inference worker failed); try another."""

    status = "UNAVAILABLE"


class StreamIdle(SegserveError):
    """A stream sent nothing (or read nothing) for longer than the idle limit."""

    status = "DEADLINE_EXCEEDED"
