"""``segserve bench``: every layer's latency and throughput in one run; JSON + PNG + table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segserve import options as o
from segserve.options import Option
from segserve.settings import SERVE_OPTIONS


def _streams(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"expected stream counts separated by commas, e.g. 1,2,4,8, got {text!r}")
    return values


def _opt(flag: str, help: str, default=None, parse=o.text, **kwargs) -> Option:
    return Option(flag, help, default, parse, env=None, **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = {opt.flag: opt for opt in SERVE_OPTIONS}
    p = subparsers.add_parser(
        "bench",
        help="benchmark bare ONNX Runtime, the pipeline, Segment, StreamSegment (needs the bench extra)",
        description="Measure, in one run on the same real frames: bare ONNX Runtime (batch 1..N), the "
        "in-process pipeline, Segment over gRPC on loopback, StreamSegment with 1/2/4/8 streams and, with "
        "--naive, the naive numpy reference. Writes results.json, table.md, layers.png and scaling.png to "
        "a folder under --out (plots need matplotlib: the bench extra).",
    )
    o.add_options(
        p,
        [
            serve["--model"],
            serve["--providers"],
            _opt(
                "--images",
                "folder of real frames (e.g. CamVid val); 1080p versions are made by resizing them",
                None,
                o.existing_dir,
                required=True,
                metavar="DIR",
            ),
            _opt("--video", "a video whose frames are measured too", None, o.existing_file, shown="none"),
            _opt(
                "--out", "results folder (a sub-folder per run)", Path("bench-results"), o.path, metavar="DIR"
            ),
            _opt("--frames", "frames per figure", None, o.integer(1), shown="100; 16 with --quick"),
            _opt("--max-batch", "largest batch (bare ONNX Runtime sweep and the batcher)", 8, o.integer(1)),
            _opt(
                "--streams",
                "concurrency levels for threads and streams",
                (1, 2, 4, 8),
                _streams,
                shown="1,2,4,8",
            ),
            _opt("--stream-window", "frames in flight per stream", 1, o.integer(1)),
            _opt("--intra-op-threads", "onnxruntime intra-op threads (0: all cores)", 0, o.integer(0)),
            _opt("--server", "HOST:PORT of a running server to measure", None, shown="start one"),
            _opt(
                "--naive",
                "the naive reference module (benchmarks/naive_pipeline.py in a clone)",
                None,
                o.existing_file,
                shown="skipped",
                metavar="PATH",
            ),
            _opt("--tag", "suffix for the results folder name", "", shown="none"),
        ],
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="GPU mode: CUDA provider (when --providers is auto) and host<->device transfer figures "
        "(default: off)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run: 16 frames per figure, fewer batch sizes (default: off)",
    )
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table (default: off)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the plots come last: say so before measuring
        raise ModuleNotFoundError("segserve bench plots with matplotlib", name="matplotlib")
    from segserve.bench.run import BenchConfig, run, table, write
    from segserve.demo.errors import DemoError

    config = BenchConfig(
        model=args.model,
        providers=args.providers,
        images=args.images,
        video=args.video,
        out=args.out,
        quick=args.quick,
        frames=args.frames,
        max_batch=args.max_batch,
        streams=args.streams,
        stream_window=args.stream_window,
        gpu=args.gpu,
        server=args.server,
        intra_op_threads=args.intra_op_threads,
        naive=args.naive,
        tag=args.tag,
        quiet=args.json,
    )
    try:
        results = run(config)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = write(results, args.out)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print()
        print(table(results))
        print(f"\nwrote {out}/results.json, table.md, layers.png, scaling.png")
    return 0
