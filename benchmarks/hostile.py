"""Hostile callers at the limits, at once, against a real `segserve serve` (loopback, bounded):
32 streams that send 1080p frames and never read, 200 unauthenticated calls that send headers but
never a message, and a burst of crafted frames (size lies, thousands of progressive scans). Prints a
table and writes JSON: the server's RSS against its idle figure and the health status throughout.

    .venv/bin/python benchmarks/hostile.py [--seconds 20] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from segserve.bench import crafted
from segserve.settings import default_model_path

TOKEN = "hostile-bench-token"
METRICS_PORT = 50199
RESULTS = Path(__file__).parent / "results"


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def gauges() -> dict[str, float]:
    """The server's own view of what it holds (frames admitted, bytes buffered, open streams)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
    wanted = ("segserve_inflight_frames", "segserve_buffered_bytes", "segserve_active_streams")
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


def start_server(model: Path, token_file: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "segserve", "serve", "--model", str(model), "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--token-file", str(token_file), "--max-pixels", "2073600", "--grace-s", "2"]
    cmd += ["--metrics-port", str(METRICS_PORT)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"listening on (\S+):(\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"127.0.0.1:{match.group(2)}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the attack is held")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument(
        "--small-window", action="store_true", help="the attacking client keeps its HTTP/2 window at 64 KiB"
    )
    parser.add_argument("--raw", action="store_true", help="streams send 6 MB raw 1080p frames, not JPEG")
    parser.add_argument(
        "--model-masks", action="store_true", help="masks at the model's size (what SegmenterClient asks for)"
    )
    parser.add_argument(
        "--small-answers", action="store_true", help="ask for no mask (isolates the read side)"
    )
    args = parser.parse_args()
    model = args.model or default_model_path()
    auth = (("authorization", f"Bearer {TOKEN}"),)
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(TOKEN)
        proc, target = start_server(model, token_file)
        stop = threading.Event()
        health_log: list[tuple[float, str]] = []
        rss_log: list[float] = []
        gauge_log: list[dict[str, float]] = []
        try:
            channel = grpc.insecure_channel(
                target,
                options=[
                    ("grpc.max_send_message_length", 64 << 20),
                    ("grpc.max_receive_message_length", 64 << 20),
                    *([("grpc.http2.bdp_probe", 0)] if args.small_window else []),
                ],
            )
            stub = pb_grpc.SegmenterStub(channel)
            health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
            frame = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), np.uint8)
            street = np.zeros((360, 480, 3), np.uint8)
            street[:180] = (235, 200, 140)
            street[180:] = (90, 90, 90)
            raw = pb.RawImage(width=1920, height=1080, format=pb.PIXEL_FORMAT_BGR8, data=frame.tobytes())
            camera_jpeg = cv2.imencode(
                ".jpg", cv2.resize(street, (1920, 1080)), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )[1].tobytes()
            # warm up and take the idle figure
            for _ in range(5):
                stub.Segment(pb.SegmentRequest(frame_id="warm", raw=raw), timeout=60, metadata=auth)
            idle_rss = rss_mb(proc.pid)

            outputs = (
                pb.OutputOptions(mask=pb.MASK_ENCODING_NONE)
                if args.small_answers
                else pb.OutputOptions(
                    mask=pb.MASK_ENCODING_RAW,
                    overlay=pb.OVERLAY_ENCODING_JPEG,
                    mask_resolution=pb.MASK_RESOLUTION_MODEL
                    if args.model_masks
                    else pb.MASK_RESOLUTION_FRAME,
                )
            )

            # cameras send JPEG (DESIGN: raw frames only on loopback); --raw sends 6 MB raw frames
            frame_field = {"raw": raw} if args.raw else {"encoded": camera_jpeg}

            def sender():
                while not stop.is_set():
                    yield pb.SegmentRequest(
                        frame_id="x" * 200,
                        **frame_field,
                        outputs=outputs,
                    )

            streams = [
                stub.StreamSegment(sender(), timeout=args.seconds + 30, metadata=auth) for _ in range(32)
            ]
            # never read: wait until the server has all 32 open (a stream the byte budget keeps
            # from reading gets no answer at all, so waiting for first answers could hang)
            opened_by = time.monotonic() + 10
            while gauges().get("segserve_active_streams", 0) < len(streams) and time.monotonic() < opened_by:
                time.sleep(0.05)  # polling the server's gauge, in a benchmark

            def never():
                stop.wait(args.seconds + 30)
                return
                yield

            half_sent = [
                channel.stream_unary("/segmentation.v1.Segmenter/Segment").future(
                    never(), timeout=args.seconds + 30
                )
                for _ in range(200)
            ]
            image = frame[:480, :640].copy()
            bombs = [crafted.size_lie_jpeg(image), crafted.many_scans_jpeg(image)] * 20
            burst = [
                stub.Segment.future(pb.SegmentRequest(frame_id="bomb", encoded=b), timeout=60, metadata=auth)
                for b in bombs
            ]
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    health_log.append(
                        (time.monotonic(), health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                    )
                except grpc.RpcError as exc:
                    health_log.append((time.monotonic(), exc.code().name))
                rss_log.append(rss_mb(proc.pid))
                gauge_log.append(gauges())
                time.sleep(0.25)  # a sampling interval, in a benchmark
            codes: dict[str, int] = {}
            for future in [*half_sent, *burst]:
                try:
                    future.result(timeout=1)
                    name = "OK"
                except grpc.RpcError as exc:
                    name = exc.code().name
                except grpc.FutureTimeoutError:
                    name = "pending"
                codes[name] = codes.get(name, 0) + 1
            try:  # during the attack: the non-reading streams hold the byte budget, so this is refused
                stub.Segment(pb.SegmentRequest(frame_id="during", raw=raw), timeout=60, metadata=auth)
                during = "OK"
            except grpc.RpcError as exc:
                during = exc.code().name
            for call in streams:
                call.cancel()
            stop.set()
            good = stub.Segment(pb.SegmentRequest(frame_id="after", raw=raw), timeout=60, metadata=auth)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(30)
    statuses = sorted({s for _, s in health_log})
    summary = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attack_s": args.seconds,
        "stream_frames": "raw 1080p (6 MB)" if args.raw else f"1080p JPEG ({len(camera_jpeg) >> 10} KB)",
        "answers": "no mask"
        if args.small_answers
        else f"raw mask at {'the model size' if args.model_masks else '1080p'} + JPEG overlay",
        "server_env": {k: v for k, v in os.environ.items() if k.startswith("SEGSERVE_")},
        "idle_rss_mb": round(idle_rss, 1),
        "peak_rss_mb": round(max(rss_log), 1),
        "peak_minus_idle_mb": round(max(rss_log) - idle_rss, 1),
        "peak_buffered_mb": round(max(g["segserve_buffered_bytes"] for g in gauge_log) / 2**20, 1),
        "peak_inflight_frames": max(g["segserve_inflight_frames"] for g in gauge_log),
        "health_statuses": statuses,
        "health_checks": len(health_log),
        "half_sent_and_crafted_codes": codes,
        "authenticated_unary_during": during,
        "authenticated_call_after_streams_closed": good.frame_id == "after",
        "pass": max(rss_log) - idle_rss <= 500 and statuses == ["SERVING"],
    }
    print("| figure | value |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"hostile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    timeline = {  # every sample: RSS and the server's own gauges, to see when memory grows
        "rss_mb": [round(v, 1) for v in rss_log],
        "buffered_mb": [round(g.get("segserve_buffered_bytes", 0) / 2**20, 1) for g in gauge_log],
        "inflight_frames": [g.get("segserve_inflight_frames", 0) for g in gauge_log],
    }
    out.write_text(json.dumps({**summary, "timeline": timeline}, indent=1))
    print(f"wrote {out}")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
