"""``segserve bench``: every layer's latency and throughput in one run; JSON + PNG + table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segserve import config as cfg


def register(subparsers: argparse._SubParsersAction) -> None:
    from segserve.bench.run import REPO, default_out

    p = subparsers.add_parser(
        "bench",
        help="benchmark bare ONNX Runtime, the pipeline, Segment, StreamSegment and the naive reference",
        description="Measure, in one run on the same real frames: bare ONNX Runtime (batch 1..N), the "
        "in-process "
        "pipeline, Segment over gRPC on loopback, StreamSegment with 1/2/4/8 streams and the naive numpy "
        "reference. Writes results.json, table.md, layers.png and scaling.png to a folder under --out.",
    )
    p.add_argument(
        "--model", type=Path, default=cfg.default_model_path(), help="served ONNX model [shipped model]"
    )
    p.add_argument(
        "--providers", default=cfg.env_default("--providers", "auto"), help="auto|cpu|cuda|tensorrt"
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="GPU mode: CUDA provider (when --providers is auto) and host<->device transfer figures",
    )
    p.add_argument(
        "--quick", action="store_true", help="a short run (16 frames per figure, fewer batch sizes)"
    )
    p.add_argument("--frames", type=int, default=None, help="frames per figure [100; quick 16]")
    p.add_argument(
        "--images",
        type=Path,
        default=Path("/work/shared/data/camvid/val/images"),
        help="folder of real frames (CamVid val); 1080p versions are made by resizing them",
    )
    p.add_argument("--video", type=Path, default=REPO / "demo" / "solidWhiteRight.mp4", help="the demo clip")
    p.add_argument("--out", type=Path, default=default_out(), help="results folder (a sub-folder per run)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch (bare ORT sweep and the batcher)")
    p.add_argument(
        "--streams", default="1,2,4,8", help="concurrency levels for threads and streams [1,2,4,8]"
    )
    p.add_argument("--stream-window", type=int, default=1, help="frames in flight per stream [1]")
    p.add_argument(
        "--intra-op-threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)"
    )
    p.add_argument("--server", default=None, help="HOST:PORT of a running server (default: start one)")
    p.add_argument(
        "--naive",
        type=Path,
        default=REPO / "benchmarks" / "naive_pipeline.py",
        help="the naive reference module",
    )
    p.add_argument("--tag", default="", help="suffix for the results folder name")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from segserve.bench.run import BenchConfig, run, table, write
    from segserve.demo.errors import DemoError

    try:
        streams = tuple(int(v) for v in args.streams.split(",") if v.strip())
    except ValueError:
        print(f"error: --streams must be numbers separated by commas, got {args.streams!r}", file=sys.stderr)
        return 2
    config = BenchConfig(
        model=args.model,
        providers=args.providers,
        images=args.images,
        video=args.video,
        out=args.out,
        quick=args.quick,
        frames=args.frames,
        max_batch=args.max_batch,
        streams=streams,
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
