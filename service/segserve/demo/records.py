"""Per-frame records (what the CSV holds) and the latency summary."""

from __future__ import annotations

import csv
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from segserve.types import Timing


@dataclass
class FrameRecord:
    frame_id: int
    capture_us: int  # wall clock, microseconds since the epoch
    send_us: int
    receive_us: int
    status: str  # ok | dropped | error: <CODE> <message>
    batch_size: int = 0
    server_total_us: int = 0
    decode_us: int = 0
    queue_us: int = 0
    preprocess_us: int = 0
    inference_us: int = 0
    postprocess_us: int = 0
    encode_us: int = 0

    @property
    def latency_ms(self) -> float:
        """Capture to result on screen/disk (glass to glass, minus the camera's own delay)."""
        return (self.receive_us - self.capture_us) / 1000.0

    @property
    def rtt_ms(self) -> float:
        return (self.receive_us - self.send_us) / 1000.0

    @classmethod
    def from_timing(
        cls, frame_id: int, capture_us: int, send_us: int, receive_us: int, status: str, t: Timing
    ) -> FrameRecord:
        return cls(
            frame_id,
            capture_us,
            send_us,
            receive_us,
            status,
            t.batch_size,
            t.total_us,
            t.decode_us,
            t.queue_us,
            t.preprocess_us,
            t.inference_us,
            t.postprocess_us,
            t.encode_us,
        )


CSV_FIELDS = [f.name for f in fields(FrameRecord)] + ["latency_ms", "rtt_ms"]


def write_csv(path: Path, records: list[FrameRecord]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        for r in records:
            writer.writerow({**asdict(r), "latency_ms": f"{r.latency_ms:.3f}", "rtt_ms": f"{r.rtt_ms:.3f}"})


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{q}": float("nan") for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


class RollingStats:
    """The last ``window`` frames, for the HUD: FPS, round-trip p50/p95, server stage means."""

    STAGES = ("decode_us", "queue_us", "preprocess_us", "inference_us", "postprocess_us", "encode_us")

    def __init__(self, window: int = 60):
        self.records: deque[FrameRecord] = deque(maxlen=window)

    def add(self, record: FrameRecord) -> None:
        self.records.append(record)

    def fps(self) -> float:
        ok = [r for r in self.records if r.status == "ok"]
        if len(ok) < 2:
            return 0.0
        span = (ok[-1].receive_us - ok[0].receive_us) / 1e6
        return (len(ok) - 1) / span if span > 0 else 0.0

    def latency(self) -> dict[str, float]:
        return percentiles([r.latency_ms for r in self.records if r.status == "ok"], (50, 95))

    def stages_ms(self) -> dict[str, float]:
        ok = [r for r in self.records if r.status == "ok"]
        if not ok:
            return {}
        return {
            s.removesuffix("_us"): float(np.mean([getattr(r, s) for r in ok])) / 1000 for s in self.STAGES
        }


def summarize(records: list[FrameRecord]) -> dict:
    ok = [r for r in records if r.status == "ok"]
    span = (ok[-1].receive_us - ok[0].receive_us) / 1e6 if len(ok) > 1 else 0.0
    batches = [r.batch_size for r in ok]
    return {
        "frames": len(records),
        "ok": len(ok),
        "dropped": sum(r.status == "dropped" for r in records),
        "errors": sum(r.status.startswith("error") for r in records),
        "fps": (len(ok) - 1) / span if span > 0 else 0.0,
        "latency_ms": percentiles([r.latency_ms for r in ok]),
        "rtt_ms": percentiles([r.rtt_ms for r in ok]),
        "server_total_ms": percentiles([r.server_total_us / 1000 for r in ok]),
        "inference_ms": percentiles([r.inference_us / 1000 for r in ok]),
        "mean_batch_size": float(np.mean(batches)) if batches else 0.0,
    }


def summary_line(summary: dict) -> str:
    lat, srv = summary["latency_ms"], summary["server_total_ms"]
    return (
        f"{summary['ok']}/{summary['frames']} frames ok ({summary['dropped']} dropped, {summary['errors']} "
        f"errors), {summary['fps']:.1f} FPS; latency capture->result p50 {lat['p50']:.1f} ms, p95 "
        f"{lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms; server p50 {srv['p50']:.1f} ms, inference p50 "
        f"{summary['inference_ms']['p50']:.1f} ms, mean batch {summary['mean_batch_size']:.2f}"
    )
