"""A bounded soak: N streams x M frames on loopback against a `segserve serve` subprocess.

Reports frames sent, answered, dropped, errors by code, p50/p99 latency (client-measured, and the
server's own total), and the server's memory (RSS) at start, after the warm-up and at the end; prints
a table and writes JSON to benchmarks/results/soak-<time>.json.

    .venv/bin/python benchmarks/soak.py --streams 8 --frames 2000          # 6 frames/s a stream: ~6 min
    .venv/bin/python benchmarks/soak.py --streams 8 --frames 200 --warmup 50   # a quick look

The model: --model, else the shipped segserve-camvid.onnx (in the package), else a toy served-contract model
at 360x480 made with tests/modelgen.py. Frames: the CamVid fixture JPEGs in tests/fixtures/camvid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))
from segserve._proto.segmentation.v1 import segmentation_pb2 as pb  # noqa: E402
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc  # noqa: E402

SHIPPED = REPO / "service" / "segserve" / "models" / "segserve-camvid.onnx"
RESULTS = REPO / "benchmarks" / "results"


# --- model, frames, server ---------------------------------------------------------------------
def model_path(arg: str | None, workdir: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), Path(arg).name
    if SHIPPED.is_file():
        return SHIPPED, SHIPPED.name
    sys.path.insert(0, str(REPO / "tests"))
    from modelgen import served_model_file

    path = served_model_file(workdir / "toy-360x480.onnx", num_classes=12, height=360, width=480)
    return path, "toy 3x3-conv, 12 classes, 360x480 (tests/modelgen.py; no shipped model yet)"


def camvid_frames() -> list[bytes]:
    files = sorted((REPO / "tests" / "fixtures" / "camvid").glob("*/images/*.jpg"))
    if files:
        return [f.read_bytes() for f in files]
    import cv2

    rng = np.random.default_rng(0)
    return [
        cv2.imencode(".jpg", rng.integers(0, 255, (360, 480, 3), np.uint8))[1].tobytes() for _ in range(4)
    ]


class Server:
    """`segserve serve` in a subprocess, its stderr in a log file."""

    def __init__(self, model: Path, log_path: Path, *args: str):
        exe = Path(sys.executable).with_name("segserve")
        cmd = [str(exe), "serve", "--model", str(model), "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--metrics-port", "0", "--log-format", "json", *args]
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"server did not start: {line!r}\n{log_path.read_text()[-3000:]}")
        self.address = f"127.0.0.1:{match.group(2)}"
        self.metrics_url = None
        for _ in range(50):
            for entry in self._logs():
                if entry.get("msg", "").startswith("metrics on"):
                    self.metrics_url = entry["msg"].split()[-1]
            if self.metrics_url:
                break
            time.sleep(0.05)

    def _logs(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> dict[str, float]:
        if not self.metrics_url:
            return {}
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        values = {}
        for line in text.splitlines():
            if line.startswith("segserve_") and "_bucket" not in line and "_created" not in line:
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def stop(self, timeout: float = 30.0) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


# --- load ----------------------------------------------------------------------------------------
def request(frame_id: str, data: bytes, policy: int | None, overlay: bool) -> pb.SegmentRequest:
    msg = pb.SegmentRequest(
        frame_id=frame_id,
        encoded=data,
        capture_time_us=time.time_ns() // 1000,
        outputs=pb.OutputOptions(
            mask=pb.MASK_ENCODING_PNG,
            mask_resolution=pb.MASK_RESOLUTION_MODEL,
            overlay=pb.OVERLAY_ENCODING_JPEG if overlay else pb.OVERLAY_ENCODING_NONE,
        ),
    )
    if policy is not None:
        msg.stream_policy = policy
    return msg


class StreamStats:
    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.dropped = 0
        self.errors: Counter[str] = Counter()
        self.latency_s: list[float] = []
        self.server_s: list[float] = []
        self.out_of_order = 0

    def merge(self, other: StreamStats) -> None:
        self.sent += other.sent
        self.answered += other.answered
        self.dropped += other.dropped
        self.errors.update(other.errors)
        self.latency_s += other.latency_s
        self.server_s += other.server_s
        self.out_of_order += other.out_of_order


def run_stream(
    stub, frames: list[bytes], n: int, name: str, policy: str, fps: float, overlay: bool, stats: StreamStats
) -> None:
    sent_at: dict[str, float] = {}
    policy_code = pb.STREAM_POLICY_LATEST if policy == "latest" else pb.STREAM_POLICY_QUEUE

    def requests():
        start = time.perf_counter()
        for i in range(n):
            if fps > 0:
                delay = start + i / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            fid = f"{name}-{i}"
            sent_at[fid] = time.perf_counter()
            stats.sent += 1
            yield request(fid, frames[i % len(frames)], policy_code if i == 0 else None, overlay)

    expected = 0
    try:
        for response in stub.StreamSegment(requests(), timeout=3600):
            now = time.perf_counter()
            if response.frame_id != f"{name}-{expected}":
                stats.out_of_order += 1
            expected += 1
            stats.answered += 1
            if response.dropped:
                stats.dropped += 1
            elif response.HasField("error"):
                code = next((c.name for c in grpc.StatusCode if c.value[0] == response.error.code), "UNKNOWN")
                stats.errors[code] += 1
            else:
                stats.latency_s.append(now - sent_at.pop(response.frame_id))
                stats.server_s.append(response.timing.total_us / 1e6)
    except grpc.RpcError as exc:
        stats.errors[f"call:{exc.code().name}"] += 1


def run_streams(
    address: str, frames: list[bytes], streams: int, n: int, policy: str, fps: float, overlay: bool, tag: str
) -> tuple[StreamStats, float]:
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    total = StreamStats()
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.SegmenterStub(channel)
        per = [StreamStats() for _ in range(streams)]
        threads = [
            threading.Thread(
                target=run_stream, args=(stub, frames, n, f"{tag}{s}", policy, fps, overlay, per[s])
            )
            for s in range(streams)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
    for s in per:
        total.merge(s)
    return total, elapsed


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summary(stats: StreamStats, elapsed: float) -> dict:
    return {
        "frames_sent": stats.sent,
        "frames_answered": stats.answered,
        "results": len(stats.latency_s),
        "dropped": stats.dropped,
        "errors_by_code": dict(stats.errors),
        "out_of_order": stats.out_of_order,
        "unanswered": stats.sent - stats.answered,
        "elapsed_s": round(elapsed, 2),
        "throughput_fps": round(len(stats.latency_s) / elapsed, 1) if elapsed else 0,
        "latency_ms": {
            "p50": round(pct(stats.latency_s, 50), 2),
            "p99": round(pct(stats.latency_s, 99), 2),
            "max": round(pct(stats.latency_s, 100), 2),
        },
        "server_total_ms": {
            "p50": round(pct(stats.server_s, 50), 2),
            "p99": round(pct(stats.server_s, 99), 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--frames", type=int, default=2000, help="frames per stream after the warm-up")
    p.add_argument("--warmup", type=int, default=200, help="frames per stream before the memory baseline")
    p.add_argument("--policy", choices=("queue", "latest"), default="queue")
    p.add_argument(
        "--fps",
        type=float,
        default=6.0,
        help="per stream (8 x 6 = 48/s, ~3/4 of this machine's capacity); 0: flat out",
    )
    p.add_argument("--overlay", action="store_true", help="ask for a JPEG overlay too")
    p.add_argument("--max-growth-mb", type=float, default=50.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("server_args", nargs="*", help="extra `segserve serve` flags, after --")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model, model_desc = model_path(args.model, Path(tmp))
        frames = camvid_frames()
        server = Server(model, Path(tmp) / "serve.log", *args.server_args)
        rss_start = server.rss_mb()
        print(f"server {server.address} pid {server.proc.pid}, model {model_desc}, RSS {rss_start:.1f} MB")
        warm, warm_s = run_streams(
            server.address, frames, args.streams, args.warmup, args.policy, args.fps, args.overlay, "w"
        )
        rss_warm = server.rss_mb()
        print(f"warm-up: {warm.answered} frames in {warm_s:.1f}s, RSS {rss_warm:.1f} MB")
        samples: list[tuple[float, float]] = []
        done = threading.Event()

        def sample():
            t0 = time.perf_counter()
            while not done.wait(1.0):
                samples.append((round(time.perf_counter() - t0, 1), round(server.rss_mb(), 1)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stats, elapsed = run_streams(
            server.address, frames, args.streams, args.frames, args.policy, args.fps, args.overlay, "s"
        )
        done.set()
        rss_end = server.rss_mb()
        server_metrics = server.metrics()
        rc = server.stop()
    result = {
        "kind": "soak",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_desc,
        "cpu_count": os.cpu_count(),
        "streams": args.streams,
        "frames_per_stream": args.frames,
        "warmup_per_stream": args.warmup,
        "policy": args.policy,
        "fps_per_stream": args.fps,
        "overlay": args.overlay,
        "server_args": args.server_args,
        **summary(stats, elapsed),
        "rss_mb": {
            "start": round(rss_start, 1),
            "after_warmup": round(rss_warm, 1),
            "end": round(rss_end, 1),
            "max_during": max((r for _, r in samples), default=rss_end),
            "growth_after_warmup": round(rss_end - rss_warm, 1),
        },
        "rss_samples": samples[:: max(1, len(samples) // 60)],
        "server_metrics": {k: v for k, v in server_metrics.items() if "seconds" not in k},
        "server_exit_code": rc,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    rows = [
        (
            "streams x frames",
            f"{args.streams} x {args.frames} ({args.policy}, fps/stream {args.fps or 'max'})",
        ),
        ("frames sent / answered", f"{result['frames_sent']} / {result['frames_answered']}"),
        ("results / dropped", f"{result['results']} / {result['dropped']}"),
        ("errors by code", result["errors_by_code"] or "none"),
        ("out of order / unanswered", f"{result['out_of_order']} / {result['unanswered']}"),
        ("throughput", f"{result['throughput_fps']} frames/s over {result['elapsed_s']} s"),
        ("latency p50 / p99 / max", "{p50} / {p99} / {max} ms".format(**result["latency_ms"])),
        ("server total p50 / p99", "{p50} / {p99} ms".format(**result["server_total_ms"])),
        (
            "RSS start / warm / end",
            "{start} / {after_warmup} / {end} MB (max {max_during})".format(**result["rss_mb"]),
        ),
        (
            "RSS growth after warm-up",
            f"{result['rss_mb']['growth_after_warmup']} MB (limit {args.max_growth_mb})",
        ),
        ("server exit code", rc),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    ok = (
        result["rss_mb"]["growth_after_warmup"] < args.max_growth_mb
        and result["unanswered"] == 0
        and result["out_of_order"] == 0
        and not result["errors_by_code"]
        and rc == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
