"""``make demo``: start a server on the shipped model, stream the shipped clip headless, stop the server.

    python -m segserve.demo.run_demo [--model PATH] [--source PATH] [--out DIR] [--frames N] [--max-rate]
                                     [--web PORT [--web-host HOST] [--web-wait]]

Everything lands in ``demo-output/``: demo.mp4 (camera | overlay, H.264: plays in a browser),
demo_frames.csv (one row per frame), demo_latency.png, demo_summary.json (warm-up and steady state
apart, with the machine's load) and server.log. ``--web PORT`` also serves the live page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from segserve import settings as cfg
from segserve.demo.cli import add_web_options, missing_extra
from segserve.demo.errors import DemoError

REPO = Path(__file__).resolve().parents[3]
DEFAULT_CLIP = REPO / "demo" / "solidWhiteRight.mp4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m segserve.demo.run_demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=cfg.default_model_path(), help="served ONNX model")
    p.add_argument("--source", default=str(DEFAULT_CLIP), help="video file, image folder or webcam index")
    p.add_argument("--out", type=Path, default=Path("demo-output"))
    p.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--max-rate", action="store_true", help="send as fast as possible, not at the clip's rate")
    p.add_argument("--server-arg", action="append", default=[], help="extra `segserve serve` argument")
    add_web_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from segserve.demo.run import DemoOptions, run
    from segserve.demo.server_process import ServerProcess

    args = parse_args(argv)
    started = time.monotonic()
    server = ServerProcess(args.model, tuple(args.server_arg), log_path=args.out / "server.log")
    try:
        print(f"starting segserve on {args.model} ...", flush=True)
        target = server.start()
        print(f"server SERVING on {target} after {time.monotonic() - started:.1f} s", flush=True)
        options = DemoOptions(
            server=target,
            source=args.source,
            out=args.out,
            headless=True,
            realtime=not args.max_rate,
            frames=args.frames,
            web_port=args.web_port,
            web_host=args.web_host,
            web_wait=args.web_wait,
            server_pid=server.process.pid if server.process else None,
        )
        code = run(options)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: {missing_extra(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
    print(f"server stopped; outputs in {args.out.resolve()}/ (open demo.mp4 and demo_latency.png)")
    return code


if __name__ == "__main__":
    sys.exit(main())
