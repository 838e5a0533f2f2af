"""/metrics over HTTP/1.x on the serving event loop: bounded connections, an idle timeout, no threads.

prometheus_client's own server starts a thread per connection with no timeout; Prometheus needs
only ``GET /metrics`` on a short-lived connection, so this answers that and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192


@dataclass
class MetricsListener:
    server: asyncio.AbstractServer
    port: int
    open_connections: int = 0

    async def close(self) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 1.0)


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, max_connections: int = 16, idle_s: float = 10.0
) -> MetricsListener:
    """Listen on ``host:port`` (0: a free port); more than ``max_connections`` at once are closed
    at once, a connection that sends no complete request within ``idle_s`` is closed."""
    listener: MetricsListener | None = None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert listener is not None
        if listener.open_connections >= max_connections:
            writer.close()
            return
        listener.open_connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), idle_s)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(request_line) >= 2 and request_line[0] in ("GET", "HEAD"):
                path = request_line[1].split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(registry)
                    reply = _response("200 OK", body, CONTENT_TYPE_LATEST)
                else:
                    reply = _response("404 Not Found", b"only /metrics is served here\n")
                if request_line[0] == "HEAD":
                    reply = reply.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            else:
                reply = _response("405 Method Not Allowed", b"GET /metrics\n")
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), idle_s)
        except (
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        finally:
            listener.open_connections -= 1
            writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)
    bound = server.sockets[0].getsockname()[1]
    listener = MetricsListener(server, bound)
    return listener
