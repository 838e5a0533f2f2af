"""Real headless Chromium driven over the DevTools protocol (CDP), for the demo's browser tests.

A few CDP calls (navigate, evaluate, screenshot) over aiohttp's WebSocket client, which the demo's
web view already depends on; only long-stable protocol methods are used, so Debian's chromium of
any recent version works. Waits run inside the page (a promise that polls a JS expression) with a
generous overall timeout: no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


requires_chromium = pytest.mark.skipif(
    chromium_path() is None,
    reason="chromium is not installed: apt-get install chromium (.ci/run installs it when it can)",
)


class Page:
    """One tab: ``await page.call(method, **params)``; events are ignored."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, timeout: float = 60.0, **params) -> dict:
        call_id = next(self.ids)
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        return await asyncio.wait_for(self._reply(call_id, method), timeout)

    async def _reply(self, call_id: int, method: str) -> dict:
        while True:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"DevTools connection closed during {method}")
            reply = json.loads(msg.data)
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def evaluate(self, expression: str, timeout: float = 60.0):
        result = await self.call(
            "Runtime.evaluate", timeout, expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0):
        """The first truthy value of ``expression``, polled in the page; None after ``timeout``."""
        script = f"""new Promise(resolve => {{
            const start = performance.now();
            (function poll() {{
                let value = null;
                try {{ value = ({expression}); }} catch (e) {{}}
                if (value) resolve(value);
                else if (performance.now() - start > {timeout * 1000}) resolve(null);
                else setTimeout(poll, 50);
            }})();
        }})"""
        return await self.evaluate(script, timeout + 30)

    async def goto(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'")

    async def screenshot(self, path: Path) -> Path:
        data = (await self.call("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.asynccontextmanager
async def chromium(size: tuple[int, int] = (1280, 800), start_timeout: float = 60.0) -> AsyncIterator[Page]:
    """A fresh headless Chromium (own profile, killed at exit) and its first tab."""
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="segserve-chromium-")
    args = [
        binary,
        "--headless",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--hide-scrollbars",
        "--mute-audio",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    drain: asyncio.Task | None = None
    try:
        port = await asyncio.wait_for(_devtools_port(process.stderr), start_timeout)
        drain = asyncio.create_task(_drain(process.stderr))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(page_url, max_msg_size=0) as ws:
                page = Page(ws)
                await page.call(  # the viewport itself: --window-size would include the window's frame
                    "Emulation.setDeviceMetricsOverride",
                    width=size[0],
                    height=size[1],
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield page
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None:
            drain.cancel()
        shutil.rmtree(profile, ignore_errors=True)


async def _devtools_port(stderr: asyncio.StreamReader) -> int:
    """Read Chromium's stderr up to its "DevTools listening on ws://127.0.0.1:PORT/..." line."""
    log: list[str] = []
    while line := (await stderr.readline()).decode(errors="replace"):
        log.append(line.strip())
        if match := _LISTENING.search(line):
            return int(match.group(1).split(":")[2].split("/")[0])
    raise RuntimeError("chromium exited at start: " + " | ".join(log[-5:]))


async def _drain(stream: asyncio.StreamReader) -> None:
    """Keep reading Chromium's stderr so a full pipe never blocks it."""
    while await stream.readline():
        pass
