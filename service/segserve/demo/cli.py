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
        "with a HUD (q or Esc quits). With --web PORT: a live page for a browser instead of the window "
        "(machines without a screen). With --headless (or no display): a side-by-side H.264 MP4, a "
        "per-frame CSV and a latency plot in --out. Ctrl-C stops and still writes the report.",
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
    add_web_options(p)
    p.set_defaults(func=main)


def web_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535 (0: any free one), got {text!r}")
    return port


def add_web_options(p: argparse.ArgumentParser) -> None:
    """``--web PORT``, ``--web-host``, ``--web-wait`` (also used by ``make demo``'s run_demo)."""
    from segserve.demo.web import MAX_VIEWERS

    p.add_argument(
        "--web",
        dest="web_port",
        metavar="PORT",
        type=web_port,
        default=None,
        help=f"serve a live page (overlay, HUD figures, latency chart) on this port instead of a window; "
        f"0 picks a free one; at most {MAX_VIEWERS} viewers [off]",
    )
    p.add_argument(
        "--web-host",
        default="127.0.0.1",
        help="address the live page listens on; 0.0.0.0 to reach it from other machines [127.0.0.1]",
    )
    p.add_argument(
        "--web-wait",
        action="store_true",
        help="with --web: start streaming when the first browser has connected [off]",
    )


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
        web_port=args.web_port,
        web_host=args.web_host,
        web_wait=args.web_wait,
    )


def main(args: argparse.Namespace) -> int:
    from segserve.demo.errors import DemoError
    from segserve.demo.run import run

    try:
        return run(options_from_args(args))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: {missing_extra(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def missing_extra(exc: ModuleNotFoundError) -> str:
    """A package of the ``demo`` extra is not installed: say which and how to get it."""
    return f"the demo needs the Python package {exc.name!r}: pip install 'segserve[demo]'"
