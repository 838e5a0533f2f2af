"""Bearer-token authentication as a grpc.aio server interceptor, and TLS credentials.

A call without valid credentials is refused from its headers, before its message is read: the
refusing handler takes the request as a stream and never reads it, so an unauthenticated caller
can neither make the server buffer a large message nor hold a handler waiting for one. The health
service stays open so probes and balancers keep working. The token itself is never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(code: grpc.StatusCode, message: str, streaming_response: bool) -> grpc.RpcMethodHandler:
    async def refuse(request_iterator, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    if streaming_response:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every method but health checks."""

    def __init__(self, token: str, on_deny: Callable[[str, str], None] | None = None):
        """``on_deny(method, code_name)`` is told of every refused call (for metrics)."""
        if not token or not token.strip():
            raise ValueError("an empty token would let everyone in")
        self._expected = token.strip().encode()
        self._on_deny = on_deny

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        header = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        scheme, _, token = header.strip().partition(" ")
        if (
            scheme.lower() == "bearer"
            and token
            and hmac.compare_digest(token.strip().encode(), self._expected)
        ):
            return await continuation(handler_call_details)
        if scheme.lower() != "bearer" or not token:
            code, message = (
                grpc.StatusCode.UNAUTHENTICATED,
                "missing 'authorization: Bearer <token>' metadata",
            )
        else:
            code, message = grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not valid"
        log.info("refused %s: %s", method[:128], code.name, extra={"method": method[:128], "code": code.name})
        if self._on_deny is not None:
            self._on_deny(method, code.name)
        handler = await continuation(handler_call_details)
        return _deny(code, message, streaming_response=bool(handler and handler.response_streaming))


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with ``client_ca``, clients must present a certificate (mTLS)."""
    pairs = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca is None:
        return grpc.ssl_server_credentials(pairs)
    return grpc.ssl_server_credentials(
        pairs, root_certificates=Path(client_ca).read_bytes(), require_client_auth=True
    )
