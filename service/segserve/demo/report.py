"""Headless output besides the video: per-frame CSV, latency plot and summary JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segserve.demo.records import FrameRecord, summarize, write_csv


@dataclass
class ReportPaths:
    video: Path | None
    csv: Path
    plot: Path | None  # None when matplotlib is not installed
    summary: Path


def plot_latency(path: Path, records: list[FrameRecord], warmup: int, title: str = "") -> bool:
    """Latency over time (warm-up shaded) and a histogram of the steady state; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.status == "ok"]
    fig, (ax_t, ax_h) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    if ok:
        t0 = ok[0].capture_us
        t = [(r.capture_us - t0) / 1e6 for r in ok]
        latency = np.array([r.latency_ms for r in ok])
        ax_t.plot(t, latency, lw=1, label="capture -> result (client)")
        ax_t.plot(t, [r.server_total_us / 1000 for r in ok], lw=1, label="server total")
        ax_t.plot(t, [r.inference_us / 1000 for r in ok], lw=1, label="inference")
        if warmup:
            ax_t.axvspan(t[0], t[min(warmup, len(t) - 1)], color="0.85", label=f"warm-up ({warmup} frames)")
        bad = [(r.capture_us - t0) / 1e6 for r in records if r.status != "ok" and r.capture_us >= t0]
        if bad:
            ax_t.plot(bad, [0] * len(bad), "x", color="red", label="dropped / error")
        ax_t.set_xlabel("capture time (s)")
        ax_t.set_ylabel("ms")
        ax_t.set_ylim(bottom=0)
        ax_t.legend(loc="upper right", fontsize=8)
        ax_t.grid(alpha=0.3)
        steady = latency[warmup:]
        ax_h.hist(steady, bins=min(40, max(5, len(steady) // 4)), color="C0", alpha=0.8)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            v = float(np.percentile(steady, q))
            ax_h.axvline(v, color="k", ls=style, lw=1, label=f"p{q} {v:.1f} ms")
        ax_h.set_xlabel("capture -> result latency (ms)")
        ax_h.set_ylabel("frames")
        ax_h.legend(fontsize=8)
    else:
        ax_t.text(0.5, 0.5, "no frame was answered", ha="center", transform=ax_t.transAxes)
    ax_t.set_title(title or "per-frame latency", fontsize=10)
    ax_h.set_title("steady-state latency histogram", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(
    out_dir: Path, records: list[FrameRecord], meta: dict, video: Path | None = None, stem: str = "demo"
) -> tuple[ReportPaths, dict]:
    """CSV, latency PNG and summary JSON (the video is written frame by frame by VideoWriter)."""
    plot: Path | None
    csv_path, plot, summary_path = (
        out_dir / f"{stem}_frames.csv",
        out_dir / f"{stem}_latency.png",
        out_dir / f"{stem}_summary.json",
    )
    write_csv(csv_path, records)
    summary = summarize(records)
    title = f"{meta.get('source', '')} -> {meta.get('server', '')} ({meta.get('model', '')})"
    if not plot_latency(plot, records, summary["warmup"]["frames"], title):
        plot = None
    summary_path.write_text(json.dumps({**meta, "summary": summary}, indent=1) + "\n")
    return ReportPaths(video, csv_path, plot, summary_path), summary
