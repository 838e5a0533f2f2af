"""``segserve demo``: stream a webcam / video / image folder to a server; live window or headless report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segserve import settings as cfg


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="stream a webcam, video or image folder to a server and show or record the overlay",
        description="Stream frames to a running server over StreamSegment. With a display: a live window "
        "with a HUD (q or Esc quits). With --headless (or no display): a side-by-side MP4, a per-frame CSV "
        "and a latency plot in --out. Ctrl-C stops and still writes the report.",
    )
    p.add_argument("--source", default="0", help="webcam index (0), video file, image folder or image [0]")
    p.add_argument(
        "--server",
        default=cfg.env_default("--server", "localhost:50051"),
        help="HOST:PORT of a running server [env SEGSERVE_SERVER; localhost:50051]",
    )
    p.add_argument("--token", default=cfg.env_default("--token"), help="bearer token [env SEGSERVE_TOKEN]")
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for the headless outputs")
    p.add_argument(
        "--headless", action="store_true", default=None, help="no window: write video, CSV and plot"
    )
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="pace a file source at its native frame rate (default)",
    )
    rate.add_argument(
        "--max-rate", dest="realtime", action="store_false", help="send frames as fast as possible"
    )
    p.add_argument("--fps", type=float, default=None, help="source frame rate override (image folders: 15)")
    p.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    p.add_argument(
        "--policy",
        choices=("queue", "latest"),
        default=None,
        help="stream policy (default: latest for a webcam, queue for files)",
    )
    p.add_argument("--inflight", type=int, default=4, help="frames sent and not yet answered, at most [4]")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 [0.5]")
    p.add_argument("--no-hud", dest="hud", action="store_false", help="do not draw the HUD")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to wait for the server [5]")
    p.set_defaults(func=main)


def options_from_args(args: argparse.Namespace):
    from segserve.demo.run import DemoOptions

    return DemoOptions(
        server=args.server,
        source=args.source,
        out=args.out,
        headless=args.headless,
        realtime=args.realtime,
        fps=args.fps,
        frames=args.frames,
        policy=args.policy,
        inflight=max(1, args.inflight),
        alpha=args.alpha,
        token=args.token,
        connect_timeout=args.connect_timeout,
        hud=args.hud,
    )


def main(args: argparse.Namespace) -> int:
    from segserve.demo.errors import DemoError
    from segserve.demo.run import run

    try:
        return run(options_from_args(args))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
