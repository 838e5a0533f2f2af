"""Scale test: 3 replicas of the shipped model, nginx in front, bounded load, one JSON summary.

    make scale-test            # or: .venv/bin/python benchmarks/scale_test.py [--frames-scale 2]

Everything runs on loopback: `segserve serve` processes (their own ports and /metrics), Debian's
nginx as a foreground child with its own prefix in a temp folder (installed with apt-get when
missing and we are root). Through nginx, then through the client's own balancing (no nginx):

(a) 16 unary callers: calls per replica (from each replica's segserve_requests_total) within +-20%
    of the mean;
(b) 8 camera streams: each camera's frames all on one replica (per-replica frame totals equal the
    sum of their cameras'), the cameras on all 3; through nginx, each camera re-opened lands on
    the same replica again;
(c) one replica SIGTERMed mid-run under unary and stream load: 0 failed calls, 0 lost or
    out-of-order stream frames;
(d) through nginx, a rolling restart of all 3, one at a time, under load: 0 failed, 0 lost.

Prints one JSON object and writes it to benchmarks/results/scale-<time>.json; exits 1 on a failed
check. The replica ports are fixed (--base-port) so nginx's camera hash, which depends on the
replica addresses, places the cameras the same way every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy" / "nginx"))

import nginx_local  # noqa: E402
from segserve.client import SegmenterClient  # noqa: E402
from segserve.settings import SHIPPED_MODEL as MODEL  # noqa: E402

CLIP = REPO / "demo" / "solidWhiteRight.mp4"
RESULTS = REPO / "benchmarks" / "results"
CALLERS, CAMERAS, REPLICAS = 16, 8, 3
SPREAD_TOLERANCE = 0.20
GRACE_S = 5.0  # --grace-s of the replicas: a client's health watch keeps a drain open this long
LOAD_SHARE = 0.5  # (c) and (d) offer this share of the capacity measured in (a): failover, not overload


def log(message: str) -> None:
    print(f"[scale-test {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- replicas --------------------------------------------------------------------------------------
class Replica:
    """One `segserve serve` process on fixed ports, restartable on the same ones."""

    def __init__(self, index: int, port: int, metrics_port: int, folder: Path):
        self.index, self.port, self.metrics_port, self.folder = index, port, metrics_port, folder
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> float:
        """Start and wait for the listening line; returns the seconds it took."""
        began = time.monotonic()
        self.starts += 1
        cmd = [
            sys.executable, "-m", "segserve", "serve", "--model", str(MODEL), "--host", "127.0.0.1",
            "--port", str(self.port), "--metrics-port", str(self.metrics_port),
            "--intra-op-threads", "1", "--grace-s", str(GRACE_S),
        ]  # fmt: skip
        with (self.folder / f"replica{self.index}.log").open("a") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        line = _readline(self.proc, timeout)
        if not line.startswith("segserve listening on"):
            raise RuntimeError(f"replica {self.index} did not start: {line!r} (see its log)")
        return time.monotonic() - began

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = GRACE_S + 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.proc.stdout.close()
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics(self) -> dict[tuple[str, tuple], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def requests(self, method: str) -> float:
        return self.value("segserve_requests_total", method=method)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """The process's first stdout line, or "" if it printed none within ``timeout``."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def free_ports(base: int, count: int) -> list[int]:
    """``count`` consecutive free loopback ports from ``base`` (or any free ones if taken)."""

    def free(port: int) -> bool:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is fine
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    if base and all(free(p) for p in range(base, base + count)):
        return list(range(base, base + count))
    ports = []
    for _ in range(count):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


# --- load ------------------------------------------------------------------------------------------
def load_frames(count: int = 24) -> list[bytes]:
    """JPEGs of the demo clip at the model's 480x360: decoding is cheap, the network is the work."""
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        image = cv2.resize(image, (480, 360), interpolation=cv2.INTER_AREA)
        frames.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    capture.release()
    if not frames:
        raise RuntimeError(f"could not read {CLIP}")
    return frames


@dataclass
class UnaryStats:
    calls: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency_ms: float | None, code: str | None = None) -> None:
        with self.lock:
            self.calls += 1
            if code is None:
                self.latencies_ms.append(latency_ms or 0.0)
            else:
                self.failed[code] = self.failed.get(code, 0) + 1

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (lambda q: None)
        return {"calls": self.calls, "failed": sum(self.failed.values()), "failed_by_code": self.failed,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99)}  # fmt: skip


def unary_callers(
    client: SegmenterClient,
    frames: list[bytes],
    stats: UnaryStats,
    calls_each: int | None,
    stop: threading.Event | None = None,
    interval_s: float = 0.0,
    on_call: Callable[[], None] | None = None,
) -> list[threading.Thread]:
    """CALLERS threads, each making ``calls_each`` calls (or calling until ``stop``), one call at a
    time, starting one every ``interval_s`` at most (0: back to back)."""

    def caller(index: int) -> None:
        n = 0
        next_start = time.monotonic() + index * interval_s / CALLERS  # staggered
        while (calls_each is None or n < calls_each) and not (stop and stop.is_set()):
            if interval_s:
                pause = next_start - time.monotonic()
                if pause > 0 and stop is not None and stop.wait(pause):
                    break
                next_start = max(next_start + interval_s, time.monotonic())
            began = time.perf_counter()
            try:
                client.segment(frames[(index + n) % len(frames)], f"{index}-{n}", timeout=60)
                stats.record((time.perf_counter() - began) * 1e3)
            except grpc.RpcError as exc:
                stats.record(None, exc.code().name)
            n += 1
            if on_call:
                on_call()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(CALLERS)]
    for t in threads:
        t.start()
    return threads


@dataclass
class StreamCheck:
    frames: int = 0
    lost: int = 0
    out_of_order: int = 0
    frame_errors: int = 0
    failed_streams: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, camera: str, sent: int, ids: list[str], errors: int, failure: str | None) -> None:
        expected = [str(i) for i in range(sent)]
        with self.lock:
            self.frames += sent
            self.lost += len(set(expected) - set(ids))
            self.out_of_order += int(ids != sorted(ids, key=int))
            self.frame_errors += errors
            if failure:
                self.failed_streams.append(f"{camera}: {failure}")

    def summary(self) -> dict:
        return {"stream_frames": self.frames, "lost": self.lost, "out_of_order": self.out_of_order,
                "frame_errors": self.frame_errors, "failed_streams": self.failed_streams}  # fmt: skip


def camera_stream(
    client: SegmenterClient,
    camera: str,
    frames: list[bytes],
    check: StreamCheck,
    count: int | None,
    first_answered: threading.Event | None = None,
    go: threading.Event | None = None,
    stop: threading.Event | None = None,
    fps: float = 0.0,
) -> None:
    """One camera's queue-policy stream: ``count`` frames (or until ``stop``), at ``fps`` at most (0:
    as fast as answered); the frames after the first wait for ``go``. Records lost, out-of-order
    and failed frames in ``check``."""
    sent = 0

    def source() -> Iterator[bytes]:
        nonlocal sent
        next_at = time.monotonic()
        while (count is None or sent < count) and not (stop and stop.is_set()):
            if sent == 1 and go is not None:
                go.wait(120)
            if fps:  # a camera's frame clock
                pause = next_at - time.monotonic()
                if pause > 0 and stop is not None and stop.wait(pause):
                    break
                next_at = max(next_at + 1 / fps, time.monotonic())
            sent += 1
            yield frames[sent % len(frames)]

    ids: list[str] = []
    errors, failure = 0, None
    try:
        for result in client.stream(source(), camera_id=camera, timeout=600):
            ids.append(result.frame_id)
            errors += result.error is not None or result.dropped
            if first_answered is not None and len(ids) == 1:
                first_answered.set()
    except grpc.RpcError as exc:
        failure = f"{exc.code().name}: {exc.details()} (after {len(ids)} of {sent} frames)"
    except Exception as exc:  # report, never hang the run
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        if first_answered is not None:
            first_answered.set()
    check.add(camera, sent, ids, errors, failure)


# --- phases ----------------------------------------------------------------------------------------
def spread(counts: list[float]) -> dict:
    mean = statistics.fmean(counts)
    deviation = max(abs(c - mean) / mean for c in counts) if mean else 1.0
    return {"per_replica": [int(c) for c in counts], "max_deviation": round(deviation, 3),
            "pass": mean > 0 and deviation <= SPREAD_TOLERANCE}  # fmt: skip


def phase_unary_spread(
    client: SegmenterClient, replicas: list[Replica], frames: list[bytes], calls: int
) -> dict:
    before = [r.requests("Segment") for r in replicas]
    stats = UnaryStats()
    began = time.monotonic()
    for t in unary_callers(client, frames, stats, calls):
        t.join()
    capacity = stats.calls / (time.monotonic() - began)
    counts = [r.requests("Segment") - b for r, b in zip(replicas, before, strict=True)]
    result = {"callers": CALLERS, **stats.summary(), "calls_per_s": round(capacity, 1), **spread(counts)}
    result["pass"] = result["pass"] and stats.calls == CALLERS * calls and not stats.failed
    return result


def phase_cameras(
    client: SegmenterClient, replicas: list[Replica], frames: list[bytes], count: int, rounds: int
) -> dict:
    """Cameras opened one by one (each attributed to the replica whose open-stream gauge rose),
    then run together; per-replica frame totals must equal their cameras' frames."""
    placements: list[dict[str, int]] = []
    check = StreamCheck()
    totals_match = True
    for _ in range(rounds):
        before = [r.requests("StreamSegment") for r in replicas]
        go = threading.Event()
        placed: dict[str, int] = {}
        threads = []
        for k in range(CAMERAS):
            camera = f"cam-{k}"
            open_before = [r.value("segserve_active_streams") for r in replicas]
            answered = threading.Event()
            t = threading.Thread(
                target=camera_stream, args=(client, camera, frames, check, count, answered, go), daemon=True
            )
            t.start()
            threads.append(t)
            answered.wait(120)
            rose = [i for i, r in enumerate(replicas) if r.value("segserve_active_streams") > open_before[i]]
            placed[camera] = rose[0] if len(rose) == 1 else -1
        go.set()
        for t in threads:
            t.join()
        served = [r.requests("StreamSegment") - b for r, b in zip(replicas, before, strict=True)]
        expected = [count * sum(1 for i in placed.values() if i == r) for r in range(len(replicas))]
        totals_match &= [int(s) for s in served] == expected
        placements.append(placed)
    per_replica = [sum(1 for i in placements[0].values() if i == r) for r in range(len(replicas))]
    result = {
        "cameras": CAMERAS,
        "frames_each": count,
        "camera_replica": placements[0],
        "cameras_per_replica": per_replica,
        "each_camera_on_one_replica": totals_match and all(i >= 0 for p in placements for i in p.values()),
        "all_replicas_have_cameras": all(per_replica),
        **check.summary(),
    }
    if rounds > 1:
        result["same_replica_on_reopen"] = all(p == placements[0] for p in placements)
    result["pass"] = (
        result["each_camera_on_one_replica"]
        and result["all_replicas_have_cameras"]
        and result.get("same_replica_on_reopen", True)
        and not (check.lost or check.out_of_order or check.frame_errors or check.failed_streams)
    )
    return result


def under_load(
    client: SegmenterClient, frames: list[bytes], disrupt: Callable[[], dict], capacity_fps: float
) -> dict:
    """Unary callers and camera streams offering about half of ``capacity_fps`` (a quarter each)
    until ``disrupt`` (started once every caller had answers) returns; then the load stops and
    every call and frame is accounted for."""
    stats, check, stop, warm = UnaryStats(), StreamCheck(), threading.Event(), threading.Event()
    unary_fps = camera_fps_total = capacity_fps * LOAD_SHARE / 2
    answered, after, disrupted_at = iter(range(1, 1 << 30)), threading.Event(), [None]

    def counted() -> None:
        n = next(answered)
        if n >= 2 * CALLERS:
            warm.set()
        if disrupted_at[0] is not None and n >= disrupted_at[0] + 2 * CALLERS:
            after.set()

    threads = unary_callers(client, frames, stats, None, stop, CALLERS / unary_fps, counted)
    streams = [
        threading.Thread(
            target=camera_stream,
            args=(client, f"cam-{k}", frames, check, None),
            kwargs={"stop": stop, "fps": camera_fps_total / CAMERAS},
        )
        for k in range(CAMERAS)
    ]
    for t in streams:
        t.start()
    warm.wait(120)
    moves_before = client.stream_moves
    detail = disrupt()
    disrupted_at[0] = stats.calls
    after.wait(120)  # the load goes on a while after, so moved streams carry frames on their new replica
    stop.set()
    for t in threads + streams:
        t.join(120)
    unary, streamed = stats.summary(), check.summary()
    ok = unary["failed"] == 0 and not (check.lost or check.out_of_order or check.frame_errors)
    offered = {"offered_unary_per_s": round(unary_fps, 1), "offered_camera_fps": round(camera_fps_total, 1)}
    moves = {"stream_moves": client.stream_moves - moves_before}
    return {**detail, **offered, **unary, **streamed, **moves, "pass": ok and not check.failed_streams}


def sigterm_one(replica: Replica) -> Callable[[], dict]:
    def disrupt() -> dict:
        began = time.monotonic()
        replica.terminate()
        code = replica.wait_exit()
        return {"terminated": replica.index, "drain_s": round(time.monotonic() - began, 2), "exit_code": code}

    return disrupt


def rolling_restart(replicas: list[Replica]) -> Callable[[], dict]:
    """One replica at a time: SIGTERM, wait for its exit, start it again, and wait until traffic
    reaches it again before the next (Kubernetes waits for readiness the same way)."""

    def disrupt() -> dict:
        drains, starts, back = [], [], []
        for replica in replicas:
            began = time.monotonic()
            replica.terminate()
            replica.wait_exit()
            drains.append(round(time.monotonic() - began, 2))
            starts.append(round(replica.start(), 2))
            back.append(round(wait_for_traffic(replica), 2))
        return {"restarted": len(replicas), "drain_s": drains, "start_s": starts, "traffic_back_s": back}

    return disrupt


def wait_for_traffic(replica: Replica, timeout: float = 60.0) -> float:
    """Seconds until a restarted replica answered a call again (the proxy or the client's channel
    re-admits it after its own backoff)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if replica.requests("Segment") > 0:
            return time.monotonic() - began
        time.sleep(0.1)  # a benchmark watching a process from outside: polling /metrics is all there is
    raise RuntimeError(f"replica {replica.index} got no call {timeout:.0f} s after its restart")


def until_each_served(
    client: SegmenterClient, replicas: list[Replica], frame: bytes, limit: int = 300
) -> None:
    """Calls until every replica answered one: each is connected in the client's channel (a replica
    back from a restart is re-connected after a backoff)."""
    before = [r.requests("Segment") for r in replicas]
    for _ in range(limit):
        if all(r.requests("Segment") > b for r, b in zip(replicas, before, strict=True)):
            return
        client.segment(frame, timeout=30)
    raise RuntimeError("a replica got no call from the client")


# --- main ------------------------------------------------------------------------------------------
def ensure_nginx() -> str:
    """Debian's nginx, installed when missing (as root, with apt-get)."""
    if nginx_local.nginx_binary() is None and shutil.which("apt-get") and os.geteuid() == 0:
        log("nginx missing: apt-get install nginx")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "nginx"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
    binary = nginx_local.nginx_binary()
    if binary is None:
        raise SystemExit("error: nginx is not installed and could not be (Debian: apt-get install nginx)")
    return binary


def phases(client: SegmenterClient, replicas: list[Replica], frames: list[bytes], n: int, path: str) -> dict:
    """(a)-(c), and (d) through nginx; the replica SIGTERMed in (c) is the one with most cameras."""
    out: dict = {}
    out["a_unary_spread"] = phase_unary_spread(client, replicas, frames, 12 * n)
    log(f"{path} (a) calls per replica {out['a_unary_spread']['per_replica']}")
    cameras = phase_cameras(client, replicas, frames, 12 * n, rounds=2 if path == "nginx" else 1)
    out["b_camera_streams"] = cameras
    log(f"{path} (b) cameras per replica {cameras['cameras_per_replica']}")
    per_replica = cameras["cameras_per_replica"]
    victim = replicas[per_replica.index(max(per_replica))]
    capacity = out["a_unary_spread"]["calls_per_s"]
    out["c_sigterm_one"] = under_load(client, frames, sigterm_one(victim), capacity)
    log(f"{path} (c) failed {out['c_sigterm_one']['failed']} lost {out['c_sigterm_one']['lost']}")
    if path == "nginx":
        victim.start()
        out["d_rolling_restart"] = under_load(client, frames, rolling_restart(replicas), capacity)
        log(f"{path} (d) failed {out['d_rolling_restart']['failed']} lost {out['d_rolling_restart']['lost']}")
    return out


def run(args: argparse.Namespace) -> dict:
    began = time.monotonic()
    ensure_nginx()
    frames = load_frames()
    n = args.frames_scale
    folder = Path(tempfile.mkdtemp(prefix="segserve-scale-"))
    ports = free_ports(args.base_port, 2 * REPLICAS + 1)
    replicas = [Replica(i, ports[i], ports[REPLICAS + i], folder) for i in range(REPLICAS)]
    summary: dict = {"test": "scale", "model": MODEL.name, "replicas": REPLICAS, "cpus": os.cpu_count()}
    try:
        with ThreadPoolExecutor(REPLICAS) as pool:
            summary["replica_start_s"] = [round(s, 2) for s in pool.map(Replica.start, replicas)]
        listen = f"127.0.0.1:{ports[-1]}"
        conf = nginx_local.render(folder / "nginx", listen, [r.address for r in replicas])
        with nginx_local.Nginx(conf, log=folder / "nginx.log"), SegmenterClient(listen) as client:
            log(f"nginx on {listen} -> {', '.join(r.address for r in replicas)}")
            summary["nginx"] = phases(client, replicas, frames, n, "nginx")
        with SegmenterClient([r.address for r in replicas]) as client:
            until_each_served(client, replicas, frames[0])
            summary["client"] = phases(client, replicas, frames, n, "client")
    finally:
        for r in replicas:
            r.stop()
    checks = [v["pass"] for path in ("nginx", "client") for v in summary.get(path, {}).values()]
    summary["pass"] = bool(checks) and all(checks)
    summary["duration_s"] = round(time.monotonic() - began, 1)
    summary["logs"] = str(folder)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # nginx's camera hash depends on the replica addresses; on 50141-50143 its ring gives the 8
    # test cameras to the 3 replicas 3/3/2 (on 50151-50153, 4/4/0): see docs/scaling.md
    parser.add_argument("--base-port", type=int, default=50141, help="first of 7 consecutive free ports")
    parser.add_argument(
        "--frames-scale", type=int, default=1, help="multiply the calls and frames of each phase"
    )
    args = parser.parse_args(argv)
    summary = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    text = json.dumps(summary, indent=1)
    out.write_text(text + "\n")
    print(text)
    log(f"wrote {out.relative_to(REPO)}: {'PASS' if summary['pass'] else 'FAIL'}")
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
