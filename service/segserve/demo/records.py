"""Per-frame records (what the CSV holds) and the latency summary."""

from __future__ import annotations

import csv
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from segserve.demo.warmup import RULE, warmup_frames
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
    """The last ``window`` frames, for the HUD: FPS, round-trip p50/p95, server stage means; and the
    last ``history`` answered frames' latencies, for the web page's chart."""

    STAGES = ("decode_us", "queue_us", "preprocess_us", "inference_us", "postprocess_us", "encode_us")

    def __init__(self, window: int = 60, history: int = 150):
        self.records: deque[FrameRecord] = deque(maxlen=window)
        self.history: deque[tuple[int, float, float]] = deque(maxlen=history)
        self.counts = {"frames": 0, "ok": 0, "dropped": 0, "errors": 0}

    def add(self, record: FrameRecord) -> None:
        self.records.append(record)
        self.counts["frames"] += 1
        if record.status == "ok":
            self.counts["ok"] += 1
            self.history.append(
                (record.frame_id, round(record.latency_ms, 2), round(record.server_total_us / 1000, 2))
            )
        elif record.status == "dropped":
            self.counts["dropped"] += 1
        else:
            self.counts["errors"] += 1

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

    def figures(self) -> dict:
        """The live page's HUD and chart data after the latest frame (JSON-ready; NaN as null)."""
        last = self.records[-1]
        lat = self.latency()

        def num(value: float) -> float | None:
            return None if value != value else round(value, 2)

        return {
            **self.counts,
            "frame": last.frame_id,
            "status": last.status,
            "fps": round(self.fps(), 2),
            "p50": num(lat["p50"]),
            "p95": num(lat["p95"]),
            "latency_ms": round(last.latency_ms, 2),
            "server_ms": round(last.server_total_us / 1000, 2),
            "inference_ms": round(last.inference_us / 1000, 2),
            "batch": last.batch_size,
            "history": list(self.history),
        }


def _fps(records: list[FrameRecord]) -> float:
    span = (records[-1].receive_us - records[0].receive_us) / 1e6 if len(records) > 1 else 0.0
    return (len(records) - 1) / span if span > 0 else 0.0


def _figures(ok: list[FrameRecord]) -> dict:
    """Latency figures of answered frames: percentiles plus the mean batch size; only a count when none."""
    if not ok:
        return {"frames": 0}
    batches = [r.batch_size for r in ok]
    return {
        "frames": len(ok),
        "fps": _fps(ok),
        "latency_ms": {**percentiles([r.latency_ms for r in ok]), "max": max(r.latency_ms for r in ok)},
        "rtt_ms": percentiles([r.rtt_ms for r in ok]),
        "server_total_ms": percentiles([r.server_total_us / 1000 for r in ok]),
        "inference_ms": percentiles([r.inference_us / 1000 for r in ok]),
        "mean_batch_size": float(np.mean(batches)),
    }


def summarize(records: list[FrameRecord]) -> dict:
    """Counts, then the warm-up frames and the steady state apart (``warmup.RULE`` says where one ends)."""
    ok = [r for r in records if r.status == "ok"]
    warm = warmup_frames([r.latency_ms for r in ok])
    return {
        "frames": len(records),
        "ok": len(ok),
        "dropped": sum(r.status == "dropped" for r in records),
        "errors": sum(r.status.startswith("error") for r in records),
        "fps": _fps(ok),
        "warmup_rule": RULE,
        "warmup": _figures(ok[:warm]),
        "steady": _figures(ok[warm:]),
    }


def summary_line(summary: dict) -> str:
    steady, warm = summary["steady"], summary["warmup"]
    counts = (
        f"{summary['ok']}/{summary['frames']} frames ok ({summary['dropped']} dropped, {summary['errors']} "
        f"errors)"
    )
    if not steady["frames"]:
        return f"{counts}: no frame was answered"
    lat, srv = steady["latency_ms"], steady["server_total_ms"]
    warm_text = (
        f"warm-up {warm['frames']} frames (latency max {warm['latency_ms']['max']:.0f} ms)"
        if warm["frames"]
        else "no warm-up frames"
    )
    return (
        f"{counts}, {summary['fps']:.1f} FPS; {warm_text}; steady state ({steady['frames']} frames): latency "
        f"capture->result p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms; server "
        f"p50 {srv['p50']:.1f} ms, inference p50 {steady['inference_ms']['p50']:.1f} ms, mean batch "
        f"{steady['mean_batch_size']:.2f}"
    )
