"""Overload at twice the capacity, against a `segserve serve` subprocess on loopback.

1. capacity: closed-loop Segment calls (as many callers as --max-inflight allows) for --duration s;
2. 2x overload, unary: an open loop at twice that rate: admitted p50/p99/max latency, refused
   (RESOURCE_EXHAUSTED) count and how fast refusals come, any other status;
3. recovery: at once, half the capacity: every call admitted, latency back to normal;
4. 2x overload, latest-policy streams: 8 cameras together sending twice the capacity: results,
   dropped markers, p99 latency of the frames that ran;
5. 2x overload, queue-policy streams: nothing dropped, the server-side latency stays bounded and the
   senders are slowed by flow control (client-side latency shows their backlog).

    .venv/bin/python benchmarks/overload.py                       # default --max-inflight 32
    .venv/bin/python benchmarks/overload.py --max-inflight 8      # a tighter latency bound

The admitted latency bound is about max_inflight / capacity (the admission queue's length in time).
Writes benchmarks/results/overload-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
from soak import REPO, RESULTS, Server, camvid_frames, model_path, pct, request, run_streams, summary

OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def closed_loop(stub, frames: list[bytes], callers: int, duration: float) -> tuple[int, Counter, list[float]]:
    codes: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    end = time.perf_counter() + duration

    def caller(k: int) -> None:
        i = 0
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                stub.Segment(request(f"c{k}-{i}", frames[i % len(frames)], None, False), timeout=30)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                codes[code] += 1
                if code == "OK":
                    latencies.append(time.perf_counter() - t)
            i += 1

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes["OK"], codes, latencies


def open_loop(stub, frames: list[bytes], rate: float, duration: float, tag: str) -> dict:
    """Calls at a fixed rate whatever the answers (clients that do not wait: cameras)."""
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    futures = []
    n = int(rate * duration)
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter()
        future = stub.Segment.future(request(f"{tag}{i}", frames[i % len(frames)], None, False), timeout=30)

        def done(f, sent=sent):
            code = f.code().name
            with lock:
                results.append((code, time.perf_counter() - sent))

        future.add_done_callback(done)
        futures.append(future)
    offered_s = time.perf_counter() - t0
    for f in futures:
        with contextlib.suppress(grpc.RpcError):
            f.result()
    while len(results) < n:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    codes = Counter(code for code, _ in results)
    ok = [lat for code, lat in results if code == "OK"]
    refused = [lat for code, lat in results if code == "RESOURCE_EXHAUSTED"]
    return {
        "offered_rate_fps": round(n / offered_s, 1),
        "calls": n,
        "codes": dict(codes),
        "admitted": len(ok),
        "refused": len(refused),
        "other": n - len(ok) - len(refused),
        "goodput_fps": round(len(ok) / elapsed, 1),
        "admitted_latency_ms": {
            "p50": round(pct(ok, 50), 1),
            "p99": round(pct(ok, 99), 1),
            "max": round(pct(ok, 100), 1),
        },
        "refusal_latency_ms": {"p50": round(pct(refused, 50), 2), "p99": round(pct(refused, 99), 2)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    p.add_argument("--max-inflight", type=int, default=32)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("server_args", nargs="*", help="extra `segserve serve` flags, after --")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, model_desc = model_path(args.model, Path(tmp))
        frames = camvid_frames()
        server = Server(
            model, Path(tmp) / "serve.log", "--max-inflight", str(args.max_inflight), *args.server_args
        )
        print(f"server {server.address}, model {model_desc}, max-inflight {args.max_inflight}")
        with grpc.insecure_channel(server.address, options=OPTIONS) as channel:
            stub = pb_grpc.SegmenterStub(channel)
            callers = min(args.max_inflight, 32)  # enough to fill the admission queue and large batches
            closed_loop(stub, frames, callers, 2.0)  # warm-up
            ok, codes, lat = closed_loop(stub, frames, callers, args.duration)
            capacity = ok / args.duration
            cap = {
                "callers": callers,
                "capacity_fps": round(capacity, 1),
                "codes": dict(codes),
                "latency_ms": {"p50": round(pct(lat, 50), 1), "p99": round(pct(lat, 99), 1)},
            }
            print(f"capacity: {capacity:.1f} frames/s ({callers} closed-loop callers)")
            over = open_loop(stub, frames, 2 * capacity, args.duration, "o")
            print(f"2x unary: {over}")
            t_fall = time.perf_counter()
            recovery = open_loop(stub, frames, 0.5 * capacity, args.duration, "r")
            recovery["first_ok_after_s"] = None
            print(f"recovery at 0.5x: {recovery}")
            # a single call right after the overload: how soon is the server itself normal again?
            after = []
            for i in range(5):
                t = time.perf_counter()
                stub.Segment(request(f"a{i}", frames[0], None, False), timeout=30)
                after.append(round((time.perf_counter() - t) * 1000, 1))
            recovery["first_ok_after_s"] = round(time.perf_counter() - t_fall, 2)
        rate = 2 * capacity / args.streams
        n = int(rate * args.duration)
        latest, latest_s = run_streams(server.address, frames, args.streams, n, "latest", rate, False, "L")
        latest_sum = summary(latest, latest_s)
        print(f"2x latest streams: {latest_sum}")
        queue, queue_s = run_streams(server.address, frames, args.streams, n, "queue", rate, False, "Q")
        queue_sum = summary(queue, queue_s)
        print(f"2x queue streams: {queue_sum}")
        rc = server.stop()
    result = {
        "kind": "overload",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": model_desc,
        "cpu_count": os.cpu_count(),
        "max_inflight": args.max_inflight,
        "server_args": args.server_args,
        "duration_s": args.duration,
        "capacity": cap,
        "unary_2x": over,
        "recovery_0_5x": recovery,
        "calls_after_recovery_ms": after,
        "latest_streams_2x": {"streams": args.streams, "fps_per_stream": round(rate, 1), **latest_sum},
        "queue_streams_2x": {"streams": args.streams, "fps_per_stream": round(rate, 1), **queue_sum},
        "server_exit_code": rc,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"overload-{time.strftime('%Y%m%d-%H%M%S')}-inflight{args.max_inflight}.json"
    out.write_text(json.dumps(result, indent=1))
    u, r, ls, qs = over, recovery, result["latest_streams_2x"], result["queue_streams_2x"]
    rows = [
        ("capacity (closed loop)", f"{cap['capacity_fps']} frames/s, p99 {cap['latency_ms']['p99']} ms"),
        ("unary at 2x: offered", f"{u['offered_rate_fps']} calls/s, {u['calls']} calls"),
        ("  admitted / refused / other", f"{u['admitted']} / {u['refused']} / {u['other']}  {u['codes']}"),
        ("  admitted p50 / p99 / max", "{p50} / {p99} / {max} ms".format(**u["admitted_latency_ms"])),
        ("  refusals p99", f"{u['refusal_latency_ms']['p99']} ms"),
        ("  goodput", f"{u['goodput_fps']} frames/s"),
        (
            "recovery at 0.5x",
            f"{r['admitted']}/{r['calls']} admitted, p99 {r['admitted_latency_ms']['p99']} ms",
        ),
        ("calls right after", f"{after} ms"),
        (
            f"latest streams at 2x ({ls['streams']})",
            f"{ls['results']} ran, {ls['dropped']} dropped, errors {ls['errors_by_code'] or 'none'}",
        ),
        ("  results p50 / p99", "{p50} / {p99} ms".format(**ls["latency_ms"])),
        (
            f"queue streams at 2x ({qs['streams']})",
            f"{qs['results']}/{qs['frames_sent']} answered, errors {qs['errors_by_code'] or 'none'}",
        ),
        ("  server-side p50 / p99", "{p50} / {p99} ms".format(**qs["server_total_ms"])),
        ("  client-side p99 (backlog)", f"{qs['latency_ms']['p99']} ms"),
        ("server exit code", rc),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if rc == 0 and u["other"] == 0 and r["refused"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
