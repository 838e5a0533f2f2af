"""Bearer-token authentication as a gRPC server interceptor, and TLS credentials.

The health service stays reachable without a token so load balancers and probes keep working.
The token itself is never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _deny_stream(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(request_iterator, context):
        context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method but health checks."""

    def __init__(self, token: str, on_deny: Callable[[str, str], None] | None = None):
        """``on_deny(method, code_name)`` is told of every refused call (for metrics)."""
        if not token or not token.strip():
            raise ValueError("an empty token would let everyone in")
        self._expected = token.strip().encode()
        self._on_deny = on_deny

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return continuation(handler_call_details)
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            code, message = (
                grpc.StatusCode.UNAUTHENTICATED,
                "missing 'authorization: Bearer <token>' metadata",
            )
        elif hmac.compare_digest(token.strip().encode(), self._expected):
            return continuation(handler_call_details)
        else:
            code, message = grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not valid"
        log.warning("refused %s: %s", method, code.name, extra={"method": method, "code": code.name})
        if self._on_deny is not None:
            self._on_deny(method.rsplit("/", 1)[-1], code.name)
        handler = continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            return _deny_stream(code, message)
        return _deny(code, message)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with ``client_ca``, clients must present a certificate (mTLS)."""
    pairs = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca is None:
        return grpc.ssl_server_credentials(pairs)
    return grpc.ssl_server_credentials(
        pairs, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True
    )
