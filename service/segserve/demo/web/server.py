"""The live view's HTTP/WebSocket server (aiohttp) on its own thread and event loop.

The demo loop calls ``publish()`` once per answered frame from its own thread; the server keeps only
the latest frame and each viewer is sent the newest one as soon as it has taken the previous one,
so a slow viewer skips frames instead of queueing them: memory is one frame plus one in flight per
viewer, and at most ``MAX_VIEWERS`` viewers are admitted (the next gets HTTP 503).

WebSocket messages, server to page: a text ``{"type": "hello", ...}`` (source, model, classes) on
connect; per frame a text ``{"type": "frame", ...}`` (the HUD figures and the recent latencies for
the chart) followed by the binary JPEG of that frame; a text ``{"type": "end", ...}`` when the
stream is over, then a normal close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
from importlib import resources

from aiohttp import WSCloseCode, web

from segserve.demo.errors import DemoError
from segserve.demo.web import MAX_VIEWERS

SEND_TIMEOUT_S = 10.0  # a viewer that takes longer than this for one frame is disconnected
KEEPALIVE_S = 15.0
_STATIC = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_HEADERS = {
    "Cache-Control": "no-store",
    # Nothing but this server: no CDN, no inline script, images only from this server or blobs.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'",
}


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a taken port is a one-line DemoError before anything starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise DemoError(f"--web-host {host!r}: {exc.strerror} (give an address such as 127.0.0.1)") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise DemoError(
            f"cannot serve the live view on {host}:{port}: {exc.strerror} "
            "(choose another --web PORT; 0 picks a free one)"
        ) from None
    sock.setblocking(False)
    return sock


class WebView:
    """``start()`` -> URL; ``publish(jpeg, figures)`` per frame; ``close(summary)`` at the end."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, hello: dict | None = None):
        self.host, self.port = host, port
        self.hello = {"type": "hello", **(hello or {})}
        self.url = ""
        self.viewer_joined = threading.Event()  # set by the first viewer
        self._files = {
            route: ((resources.files(__package__) / "static" / name).read_bytes(), ctype)
            for route, (name, ctype) in _STATIC.items()
        }
        self._latest: tuple[int, str, bytes] | None = None
        self._seq = 0
        self._viewers: dict[web.WebSocketResponse, asyncio.Event] = {}
        self._senders: set[asyncio.Task] = set()
        self._closing = False
        self._end: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # -- the demo thread's side ---------------------------------------------------------------
    def start(self) -> str:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        shown_host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown_host}:{self.port}/"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sock, ready), name="web-view", daemon=True)
        self._thread.start()
        ready.wait()
        return self.url

    def publish(self, jpeg: bytes, figures: dict) -> None:
        """Thread-safe: make this the frame every viewer gets next."""
        if self._loop is not None and not self._closing:
            message = json.dumps({"type": "frame", **figures})
            self._loop.call_soon_threadsafe(self._set_latest, message, jpeg)

    def wait_viewer(self) -> None:
        """Block until a browser has connected (Ctrl-C interrupts it)."""
        self.viewer_joined.wait()

    def close(self, summary: str = "end of stream", timeout: float = 10.0) -> None:
        """Tell the viewers the stream is over, close their sockets and stop the server."""
        if self._loop is None or self._thread is None:
            return
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(summary), self._loop)
            with contextlib.suppress(Exception):  # a stuck viewer: the loop is stopped below anyway
                future.result(timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._loop = None

    # -- the server thread --------------------------------------------------------------------
    def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        app = web.Application()
        for route in self._files:
            app.router.add_get(route, self._static)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/snapshot.jpg", self._snapshot)
        # Idle keep-alive connections (the page's own requests) are closed after KEEPALIVE_S.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=KEEPALIVE_S
        )
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.SockSite(self._runner, sock).start())
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def _set_latest(self, message: str, jpeg: bytes) -> None:
        self._seq += 1
        self._latest = (self._seq, message, jpeg)
        for wake in self._viewers.values():
            wake.set()

    async def _static(self, request: web.Request) -> web.Response:
        body, content_type = self._files[request.path]
        return web.Response(body=body, content_type=content_type, headers=_HEADERS)

    async def _snapshot(self, request: web.Request) -> web.Response:
        """The latest frame as a JPEG (curl-friendly); 503 until the first frame."""
        if self._latest is None:
            return web.Response(status=503, text="no frame yet\n")
        return web.Response(body=self._latest[2], content_type="image/jpeg", headers=_HEADERS)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if len(self._viewers) >= MAX_VIEWERS:
            return web.Response(status=503, text=f"at most {MAX_VIEWERS} viewers\n")
        if self._closing:
            return web.Response(status=503, text="the stream is over\n")
        # No permessage-deflate: JPEGs do not shrink, and deflating them would cost the CPU we measure.
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096, compress=False)
        await ws.prepare(request)
        wake = asyncio.Event()
        self._viewers[ws] = wake
        self.viewer_joined.set()
        sender = asyncio.create_task(self._send_frames(ws, wake))
        self._senders.add(sender)
        sender.add_done_callback(self._sender_done)
        try:
            async for _ in ws:  # the page sends nothing; this notices its close
                pass
        finally:
            sender.cancel()
            self._viewers.pop(ws, None)
        return ws

    def _sender_done(self, task: asyncio.Task) -> None:
        """Forget a finished sender; a viewer's failure is that viewer's, never a logged traceback."""
        self._senders.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            print(f"web view: a viewer was dropped: {exc!r}", file=sys.stderr)

    async def _send_frames(self, ws: web.WebSocketResponse, wake: asyncio.Event) -> None:
        seen = 0
        try:
            await asyncio.wait_for(ws.send_str(json.dumps(self.hello)), SEND_TIMEOUT_S)
            wake.set()
            while not ws.closed:
                await wake.wait()
                wake.clear()
                if self._end is not None:
                    await asyncio.wait_for(ws.send_str(self._end), SEND_TIMEOUT_S)
                    await ws.close(code=WSCloseCode.OK, message=b"end of stream")
                    return
                if self._latest is None or self._latest[0] == seen:
                    continue
                seen, message, jpeg = self._latest
                await asyncio.wait_for(ws.send_str(message), SEND_TIMEOUT_S)
                await asyncio.wait_for(ws.send_bytes(jpeg), SEND_TIMEOUT_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"too slow")
        except ConnectionError:
            pass  # the viewer went away (tab closed, network gone): nothing to tell it

    async def _shutdown(self, summary: str) -> None:
        self._closing = True
        self._end = json.dumps({"type": "end", "summary": summary})
        for wake in self._viewers.values():
            wake.set()
        viewers = list(self._viewers)
        if self._senders:  # each sends the end message and closes its socket
            await asyncio.wait(list(self._senders), timeout=5.0)
        for ws in viewers:  # a viewer too slow to take the end message
            if not ws.closed:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
