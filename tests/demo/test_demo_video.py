"""The headless demo's video plays in a browser: H.264/yuv420p/faststart by probe, and in real Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np
import pytest
from aiohttp import web
from browser import chromium, requires_chromium
from frames import street_frame
from segserve.cli import main
from segserve.demo.video import ENCODERS, VideoWriter, probe

PLAYER = """<!doctype html>
<video id="v" src="demo.mp4" muted autoplay playsinline></video>
<canvas id="c"></canvas>
<script>
const v = document.getElementById("v");
v.addEventListener("error", () => {
  document.body.dataset.state = "error " + v.error.code + " " + v.error.message;
});
v.addEventListener("timeupdate", () => {
  if (v.currentTime <= 0 || document.body.dataset.state) return;
  const c = document.getElementById("c");
  c.width = v.videoWidth; c.height = v.videoHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < px.length; i += 4) { lo = Math.min(lo, px[i + 1]); hi = Math.max(hi, px[i + 1]); }
  document.body.dataset.state = `playing ${v.videoWidth}x${v.videoHeight} range ${hi - lo}`;
});
</script>
"""


@pytest.fixture(scope="module")
def demo_video(target: str, clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-video")
    assert (
        main(
            ["demo", "--source", str(clip), "--server", target, "--headless", "--max-rate", "--out", str(out)]
        )
        == 0
    )
    return out / "demo.mp4"


def test_the_demo_video_is_h264_in_a_faststart_mp4(demo_video: Path) -> None:
    info = probe(demo_video)
    assert "mp4" in info.container.split(",")
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.faststart
    assert (info.width, info.height, info.frames) == (640, 180, 24)  # camera | overlay, every clip frame
    assert info.fps == pytest.approx(25.0)
    assert info.browser_playable


@requires_chromium
def test_the_demo_video_plays_in_headless_chromium(demo_video: Path, tmp_path: Path) -> None:
    """Served over HTTP (range requests, as a browser fetches media), decoded to a picture with content."""
    (tmp_path / "demo.mp4").write_bytes(demo_video.read_bytes())
    (tmp_path / "index.html").write_text(PLAYER)

    async def scenario() -> str:
        app = web.Application()
        app.router.add_static("/", tmp_path)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with chromium() as page:
                await page.goto(f"http://127.0.0.1:{port}/index.html")
                return await page.wait_for("document.body.dataset.state")
        finally:
            await runner.cleanup()

    state = asyncio.run(scenario())
    assert state is not None, "the video never started playing"
    assert state.startswith("playing 640x180"), state
    assert int(state.rsplit(" ", 1)[1]) > 50  # a decoded picture, not a blank frame


@pytest.mark.parametrize("encoder", [e[0] for e in ENCODERS])
def test_every_listed_encoder_makes_a_browser_playable_file(encoder: str, tmp_path: Path) -> None:
    if encoder not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {encoder}")
    writer = VideoWriter(tmp_path / "v.mp4", 29.97, (161, 91), encoder=encoder)  # odd sizes on purpose
    for i in range(10):
        frame = street_frame(161, 91, seed=i)
        writer.write(frame, np.ascontiguousarray(frame[:, ::-1]))
    writer.close()
    info = probe(writer.path)
    assert info.browser_playable, info
    assert (info.width, info.height, info.frames) == (320, 90, 10)
    assert info.fps == pytest.approx(29.97, abs=0.01)
