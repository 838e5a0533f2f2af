"""Headless output: side-by-side MP4 (camera frame | overlay), per-frame CSV, latency plot, summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segserve.demo.records import FrameRecord, summarize, write_csv


@dataclass
class ReportPaths:
    video: Path
    csv: Path
    plot: Path
    summary: Path


class VideoWriter:
    """MPEG-4 (mp4v: the codec every opencv-python wheel can write) at the source's frame rate."""

    def __init__(self, path: Path, fps: float, frame_size: tuple[int, int]):
        self.path = path
        width, height = frame_size
        self.size = (width * 2, height)
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, self.size)
        if not self.writer.isOpened():
            raise OSError(f"cannot write {path}")
        self.frames = 0

    def write(self, frame: np.ndarray, right: np.ndarray) -> None:
        size = (self.size[0] // 2, self.size[1])
        if frame.shape[1::-1] != size:
            frame = cv2.resize(frame, size)
        if right.shape[1::-1] != size:
            right = cv2.resize(right, size, interpolation=cv2.INTER_NEAREST)
        self.writer.write(np.hstack((frame, right)))
        self.frames += 1

    def close(self) -> None:
        self.writer.release()


def plot_latency(path: Path, records: list[FrameRecord], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.status == "ok"]
    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    if ok:
        t0 = ok[0].capture_us
        t = [(r.capture_us - t0) / 1e6 for r in ok]
        latency = np.array([r.latency_ms for r in ok])
        server = np.array([r.server_total_us / 1000 for r in ok])
        inference = np.array([r.inference_us / 1000 for r in ok])
        ax_t.plot(t, latency, lw=1, label="capture -> result (client)")
        ax_t.plot(t, server, lw=1, label="server total")
        ax_t.plot(t, inference, lw=1, label="inference")
        bad = [(r.capture_us - t0) / 1e6 for r in records if r.status != "ok" and r.capture_us >= t0]
        if bad:
            ax_t.plot(bad, [0] * len(bad), "x", color="red", label="dropped / error")
        ax_t.set_xlabel("capture time (s)")
        ax_t.set_ylabel("ms")
        ax_t.set_ylim(bottom=0)
        ax_t.legend(loc="upper right", fontsize=8)
        ax_t.grid(alpha=0.3)
        ax_h.hist(latency, bins=min(40, max(5, len(ok) // 4)), color="C0", alpha=0.8)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            v = float(np.percentile(latency, q))
            ax_h.axvline(v, color="k", ls=style, lw=1, label=f"p{q} {v:.1f} ms")
        ax_h.set_xlabel("capture -> result latency (ms)")
        ax_h.set_ylabel("frames")
        ax_h.legend(fontsize=8)
    else:
        ax_t.text(0.5, 0.5, "no frame was answered", ha="center", transform=ax_t.transAxes)
    ax_t.set_title(title or "per-frame latency", fontsize=10)
    ax_h.set_title("latency histogram", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    out_dir: Path, records: list[FrameRecord], meta: dict, stem: str = "demo"
) -> tuple[ReportPaths, dict]:
    """CSV, latency PNG and summary JSON (the video is written frame by frame by VideoWriter)."""
    paths = ReportPaths(
        out_dir / f"{stem}.mp4",
        out_dir / f"{stem}_frames.csv",
        out_dir / f"{stem}_latency.png",
        out_dir / f"{stem}_summary.json",
    )
    write_csv(paths.csv, records)
    summary = summarize(records)
    title = f"{meta.get('source', '')} -> {meta.get('server', '')} ({meta.get('model', '')})"
    plot_latency(paths.plot, records, title)
    paths.summary.write_text(json.dumps({**meta, "summary": summary}, indent=1) + "\n")
    return paths, summary
