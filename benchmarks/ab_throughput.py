"""Side-by-side throughput of two checkouts of segserve on the same frames, in one run.

Starts `segserve serve` from each source tree (``--a`` and ``--b``, each a folder holding
``service/segserve``) on loopback with the same model, then measures unary ``Segment`` at k callers
(1080p JPEGs in, PNG mask + JPEG overlay out, as `make bench`), alternating A and B in blocks so a
load that comes and goes hits both alike. Prints a table and writes JSON (frames/s, p50, and the B/A
ratios).

    git worktree add /tmp/base 9db695d
    .venv/bin/python benchmarks/ab_throughput.py --a /tmp/base --b . --callers 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.bench.measure import concurrent
from segserve.settings import default_model_path

RESULTS = Path(__file__).parent / "results"


def start(tree: Path, model: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "service")}
    cmd = [
        sys.executable,
        "-m",
        "segserve",
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tree
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"listening on (\S+):(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"{tree}: server did not start: {line!r}")
    return proc, f"127.0.0.1:{match.group(2)}"


def block(
    target: str, requests: list[pb.SegmentRequest], callers: int, frames: int
) -> tuple[float, float, list[float]]:
    """``frames`` Segment calls shared by ``callers`` threads (the bench's closed loop): (fps, p50 ms,
    each call's client-observed ms minus the server's ``timing.total_us``)."""
    outside: list[float] = []
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.SegmenterStub(channel)

        def work(i: int) -> int:
            t0 = time.perf_counter()
            response = stub.Segment(requests[i % len(requests)], timeout=60)
            outside.append((time.perf_counter() - t0) * 1e3 - response.timing.total_us / 1e3)
            return response.timing.batch_size

        s = concurrent(work, callers, frames, warmup=1)
    return s["fps"], s["p50"], outside[1:]  # the warm-up call aside


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", type=Path, required=True, help="the base checkout (a folder with service/)")
    parser.add_argument("--b", type=Path, default=Path("."), help="the checkout compared with it")
    parser.add_argument("--images", type=Path, default=Path("/work/shared/data/camvid/val/images"))
    parser.add_argument("--callers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per side and caller count")
    parser.add_argument("--frames", type=int, default=48, help="frames per block")
    args = parser.parse_args()
    files = sorted(args.images.glob("*.jpg"))[:16]
    if not files:
        raise SystemExit(f"no JPEG frames in {args.images}")
    jpegs = [
        cv2.imencode(".jpg", cv2.resize(cv2.imread(str(f)), (1920, 1080)), [cv2.IMWRITE_JPEG_QUALITY, 90])[
            1
        ].tobytes()
        for f in files
    ]
    outputs = pb.OutputOptions(mask=pb.MASK_ENCODING_PNG, overlay=pb.OVERLAY_ENCODING_JPEG)
    requests = [pb.SegmentRequest(frame_id=str(i), encoded=j, outputs=outputs) for i, j in enumerate(jpegs)]
    model = default_model_path()
    servers = {side: start(tree.resolve(), model) for side, tree in (("a", args.a), ("b", args.b))}
    rows = {}
    try:
        for k in args.callers:
            fps: dict[str, list[float]] = {"a": [], "b": []}
            lat: dict[str, list[float]] = {"a": [], "b": []}
            out: dict[str, list[float]] = {"a": [], "b": []}
            for _ in range(args.blocks):
                for side in ("a", "b"):
                    f, p50, outside = block(servers[side][1], requests, k, args.frames)
                    fps[side].append(f)
                    lat[side].append(p50)
                    out[side] += outside
            row = {
                side: {
                    "fps": round(float(np.median(fps[side])), 2),
                    "p50_ms": round(float(np.median(lat[side])), 1),
                    "outside_server_p50_ms": round(float(np.median(out[side])), 2),
                }
                for side in ("a", "b")
            }
            row["fps_b_over_a"] = round(row["b"]["fps"] / row["a"]["fps"], 3)
            rows[str(k)] = row
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    summary = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "a": str(args.a),
        "b": str(args.b),
        "load_average_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "callers": rows,
    }
    print(
        "| callers | A frames/s | B frames/s | B/A | A p50 ms | B p50 ms | A outside ms | B outside ms |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for k, r in rows.items():
        a, b = r["a"], r["b"]
        print(
            f"| {k} | {a['fps']} | {b['fps']} | {r['fps_b_over_a']} | {a['p50_ms']} | {b['p50_ms']} "
            f"| {a['outside_server_p50_ms']} | {b['outside_server_p50_ms']} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ab-throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
