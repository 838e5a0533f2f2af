"""Take the README's screenshot of the live page: ``make demo``'s run with ``--web``, in headless Chromium.

    PYTHONPATH=service .venv/bin/python tests/demo/screenshot_web.py [docs/img/demo-web.png] [--frames 90]

Starts a server on the shipped model, streams the shipped clip to it, opens the page once that many
frames have been shown, saves the screenshot and stops everything with Ctrl-C's path.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # browser, demo_support
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # frames (imported by demo_support)

from browser import chromium
from demo_support import DemoProcess

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", type=Path, default=REPO / "docs" / "img" / "demo-web.png")
    p.add_argument("--frames", type=int, default=90, help="frames shown before the screenshot [90]")
    p.add_argument("--size", default="1280x800", help="viewport WxH [1280x800]")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        demo = DemoProcess("segserve.demo.run_demo", "--web", "0", "--web-wait", "--out", tmp)
        url = demo.wait_line(r"live view on (http://\S+)").group(1)

        async def shoot() -> None:
            async with chromium((width, height)) as page:
                await page.goto(url)
                shown = await page.wait_for(f"Number(document.body.dataset.shown) >= {args.frames}", 180)
                if not shown:
                    raise SystemExit("the page did not show enough frames")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(args.out)

        try:
            asyncio.run(shoot())
        finally:
            demo.process.send_signal(signal.SIGINT)
            code, out, err = demo.finish()
    print(out, err, sep="")
    print(f"wrote {args.out}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
