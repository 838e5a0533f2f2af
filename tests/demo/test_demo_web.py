"""`segserve demo --web PORT`: the live page in real headless Chromium, its bounds, its errors."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from pathlib import Path

import aiohttp
import cv2
import pytest
from browser import chromium, requires_chromium
from demo_support import DemoProcess, segserve
from segserve.client import SegmenterClient
from segserve.demo.web import MAX_VIEWERS
from segserve.demo.web.server import WebView

SHOWN = "Number(document.body.dataset.shown)"
CHART = "document.getElementById('chart')"


def _demo(*args: str) -> DemoProcess:
    return DemoProcess("segserve", "demo", "--web", "0", "--web-wait", *args)


@requires_chromium
def test_live_page_in_headless_chromium(target: str, long_clip: Path, tmp_path: Path) -> None:
    """The page loads, frames advance, the HUD and the chart update; Ctrl-C ends it cleanly."""
    demo = _demo("--source", str(long_clip), "--server", target, "--out", str(tmp_path / "unused"))
    url = demo.wait_line(r"live view on (http://\S+)").group(1)

    async def scenario() -> dict:
        async with chromium((1280, 800)) as page:
            await page.goto(url)
            assert await page.wait_for(f"{SHOWN} >= 3"), "no frame was shown"
            first = await page.evaluate(f"[{SHOWN}, {CHART}.dataset.draws, {CHART}.toDataURL()]")
            assert await page.wait_for(f"{SHOWN} >= {first[0] + 5}"), "the frames stopped advancing"
            second = await page.evaluate(f"[{SHOWN}, {CHART}.dataset.draws, {CHART}.toDataURL()]")
            # the view swaps images frame by frame: wait for one that is loaded, do not sample one
            full_size = await page.wait_for("document.getElementById('view').naturalWidth === 320")
            hud = await page.evaluate(
                """({
                    frames: Number(document.getElementById('frames').textContent),
                    fps: document.getElementById('fps').textContent,
                    p50: document.getElementById('p50').textContent,
                    p95: document.getElementById('p95').textContent,
                    points: Number(document.getElementById('chart').dataset.points),
                    legend: [...document.querySelectorAll('#legend li')].map(li => li.textContent),
                    rect: (r => [r.x, r.y, r.width, r.height])(
                        document.getElementById('view').getBoundingClientRect()),
                    state: document.body.dataset.state,
                })"""
            )
            await page.screenshot(tmp_path / "live.png")
            demo.process.send_signal(signal.SIGINT)  # Ctrl-C: the page is told the stream is over
            ended = await page.wait_for(
                "document.body.dataset.state === 'ended' && document.getElementById('summary').textContent"
            )
        return {"first": first, "second": second, "hud": hud, "ended": ended, "full_size": full_size}

    seen = asyncio.run(scenario())
    code, out, err = demo.finish()
    assert code == 0, err
    assert "Traceback" not in err
    hud = seen["hud"]
    assert seen["second"][0] > seen["first"][0]
    assert int(seen["second"][1]) > int(seen["first"][1])  # the chart was redrawn ...
    assert seen["second"][2] != seen["first"][2]  # ... with different pixels
    assert hud["state"] == "live" and hud["frames"] >= 8 and hud["points"] >= 8
    assert seen["full_size"]  # the clip's size (320 wide): the server's overlay, not a placeholder
    assert float(hud["fps"]) > 0 and hud["p50"].endswith(" ms") and hud["p95"].endswith(" ms")
    with SegmenterClient(target) as client:
        assert hud["legend"] == [c.name for c in client.model_info().labels.classes]
    assert "frames ok" in seen["ended"] and "interrupted" in out
    shot = cv2.imread(str(tmp_path / "live.png"))
    assert shot.shape[:2] == (800, 1280)
    x, y, w, h = (round(v) for v in hud["rect"])
    assert shot[y : y + h, x : x + w].std() > 20  # a picture in the view, not an empty box
    assert not (tmp_path / "unused").exists()  # --web without --headless writes no files


@requires_chromium
def test_live_page_ends_with_the_video(target: str, clip: Path, tmp_path: Path) -> None:
    demo = _demo(
        "--source", str(clip), "--server", target, "--max-rate", "--headless", "--out", str(tmp_path)
    )
    url = demo.wait_line(r"live view on (http://\S+)").group(1)

    async def scenario() -> str:
        async with chromium() as page:
            await page.goto(url)
            return await page.wait_for(
                "document.body.dataset.state === 'ended' && document.getElementById('summary').textContent"
            )

    summary = asyncio.run(scenario())
    code, _, err = demo.finish()
    assert code == 0, err
    assert summary.startswith("24/24 frames ok")
    assert (tmp_path / "demo.mp4").is_file()  # with --headless the files are written too


@requires_chromium
def test_a_closed_tab_does_not_disturb_the_stream(target: str, long_clip: Path) -> None:
    """A browser that vanishes mid-stream (killed, not closed politely) costs no traceback; the next
    viewer gets frames as before."""
    demo = _demo("--source", str(long_clip), "--server", target)
    url = demo.wait_line(r"live view on (http://\S+)").group(1)

    async def view() -> bool:
        async with chromium() as page:
            await page.goto(url)
            return bool(await page.wait_for(f"{SHOWN} >= 3"))

    assert asyncio.run(view())  # the context kills Chromium: its socket dies mid-stream
    assert asyncio.run(view())
    demo.process.send_signal(signal.SIGINT)
    code, out, err = demo.finish()
    assert code == 0, err
    assert "Traceback" not in err and "exception" not in err.lower(), err
    assert "frames ok" in out


def test_ctrl_c_while_waiting_for_a_viewer(target: str, clip: Path, tmp_path: Path) -> None:
    demo = _demo("--source", str(clip), "--server", target, "--headless", "--out", str(tmp_path))
    demo.wait_line(r"waiting for a browser")
    demo.process.send_signal(signal.SIGINT)
    code, out, err = demo.finish()
    assert code == 130 and "Traceback" not in err, err
    assert "streaming" not in out and not (tmp_path / "demo.mp4").exists()


def test_port_in_use_is_one_line(target: str, clip: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = segserve("demo", "--source", str(clip), "--server", target, "--web", str(port))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot serve the live view"), result.stderr
    assert f":{port}" in lines[0] and "--web" in lines[0]


@pytest.mark.parametrize("port", ["abc", "70000", "-1"])
def test_bad_port_is_a_usage_error(port: str) -> None:
    result = segserve("demo", "--web", port)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "expected a port number 0-65535" in result.stderr


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), 60)


def test_viewers_are_bounded_and_told_the_end() -> None:
    view = WebView(hello={"source": "test"})
    url = view.start()

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            viewers = [await session.ws_connect(url + "ws") for _ in range(MAX_VIEWERS)]
            for ws in viewers:
                assert json.loads((await _receive(ws)).data) == {"type": "hello", "source": "test"}
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url + "ws")
            assert refused.value.status == 503
            view.publish(b"\xff\xd8jpeg", {"frame": 7})
            for ws in viewers:
                assert json.loads((await _receive(ws)).data) == {"type": "frame", "frame": 7}
                assert (await _receive(ws)).data == b"\xff\xd8jpeg"
            async with session.get(url + "snapshot.jpg") as response:
                assert await response.read() == b"\xff\xd8jpeg"
            closer = threading.Thread(target=view.close, args=("all done",))
            closer.start()
            for ws in viewers:
                assert json.loads((await _receive(ws)).data) == {"type": "end", "summary": "all done"}
                assert (await _receive(ws)).type == aiohttp.WSMsgType.CLOSE
            await asyncio.get_running_loop().run_in_executor(None, closer.join)

    try:
        asyncio.run(scenario())
    finally:
        view.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", view.port), timeout=5):
        pass  # the server is gone


def test_a_slow_viewer_skips_to_the_newest_frame() -> None:
    """A viewer that does not read is not queued 100 frames of 2 MB: it gets the newest when it reads."""
    view = WebView()
    url = view.start()
    frames, size = 100, 2 << 20

    async def scenario() -> list[int]:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(url + "ws", max_msg_size=0)
            assert json.loads((await _receive(ws)).data)["type"] == "hello"
            for i in range(1, frames + 1):  # published while the viewer reads nothing
                view.publish(bytes([i % 256]) * size, {"frame": i})
            received = []
            while not received or received[-1] != frames:
                received.append(json.loads((await _receive(ws)).data)["frame"])
                assert len((await _receive(ws)).data) == size
            await ws.close()
            return received

    try:
        received = asyncio.run(scenario())
    finally:
        view.close()
    assert received == sorted(received) and received[-1] == frames
    assert len(received) < frames // 2, received
