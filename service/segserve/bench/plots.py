"""PNG plots of a benchmark run (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path


def plot_all(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = results["layers"]
    meta = results["meta"]
    title = (
        f"{meta['model']['name']} {meta['model']['input_hw'][1]}x{meta['model']['input_hw'][0]} on "
        f"{meta['providers_used'][0]}, {meta['machine']['cpu_count']} CPUs"
    )

    # 1. latency per layer (p50 bar, p95/p99 ticks) and the stage breakdown ours vs naive
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2]})
    rows = [("bare ORT b1", layers["bare_ort"]["1"])]
    if "p50" in layers.get("float_network", {}):
        rows.append(("float network alone", layers["float_network"]))
    rows += [("in-process 1080p", layers["inprocess"])]
    if "naive" in layers:
        rows.append(("naive numpy 1080p", layers["naive"]))
    rows.append(("Segment RPC 1080p", layers["segment_rpc"]))
    rows += [(f"stream x{k} (per frame)", s) for k, s in layers.get("stream", {}).items()]
    names = [r[0] for r in rows]
    y = range(len(rows))
    ax.barh(y, [r[1]["p50"] for r in rows], color="C0", label="p50")
    ax.scatter([r[1]["p95"] for r in rows], y, marker="|", s=200, color="k", label="p95")
    ax.scatter([r[1]["p99"] for r in rows], y, marker="|", s=200, color="red", label="p99")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("latency per frame (ms)")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    ours = layers["inprocess"].get("stages_mean", {})
    stacks = [("ours (in-process)", {k: v for k, v in ours.items() if k != "total_ms"})]
    if "naive" in layers:
        stacks.append(("naive", layers["naive"]["stages_mean"]))
    for i, (_label, stages) in enumerate(stacks):
        left = 0.0
        for j, (stage, value) in enumerate(stages.items()):
            ax2.barh(
                i, value, left=left, color=plt.cm.tab20(j % 20 + (10 if i else 0) % 20), edgecolor="white"
            )
            if value > 2:
                ax2.text(
                    left + value / 2,
                    i,
                    stage.removesuffix("_ms"),
                    ha="center",
                    va="center",
                    fontsize=7,
                    rotation=90,
                )
            left += value
    ax2.set_yticks(range(len(stacks)), [s[0] for s in stacks])
    ax2.set_xlabel("mean ms per 1080p frame, by stage")
    ax2.set_title("where the time goes", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "layers.png", dpi=100)
    plt.close(fig)

    # 2. scaling: batch size for bare ORT, concurrency for in-process / RPC / streams
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    bs = [int(b) for b in layers["bare_ort"]]
    ax.plot(
        bs, [layers["bare_ort"][str(b)]["per_frame_ms"] for b in bs], "o-", label="ms per frame (p50/batch)"
    )
    ax.set_xlabel("batch size")
    ax.set_ylabel("ms per frame")
    ax.grid(alpha=0.3)
    axr = ax.twinx()
    axr.plot(bs, [layers["bare_ort"][str(b)]["fps"] for b in bs], "s--", color="C1", label="FPS")
    axr.set_ylabel("FPS")
    ax.set_ylim(bottom=0)
    axr.set_ylim(bottom=0)
    ax.set_xticks(bs)
    ax.set_title("bare ONNX Runtime vs batch size", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    axr.legend(loc="upper right", fontsize=8)
    for key, label, style in (
        ("inprocess_threads", "in-process, threads", "o-"),
        ("segment_rpc_threads", "Segment RPC, threads", "^-"),
        ("stream", "StreamSegment, streams", "s-"),
    ):
        series = layers.get(key, {})
        if series:
            ks = [int(k) for k in series]
            ax2.plot(ks, [series[str(k)]["fps"] for k in ks], style, label=label)
    ax2.set_xlabel("concurrent callers")
    ax2.set_ylabel("aggregate FPS (1080p, full outputs)")
    ax2.set_xscale("log", base=2)
    levels = sorted({int(k) for key in ("inprocess_threads", "stream") for k in layers.get(key, {})})
    ax2.set_xticks(levels, [str(k) for k in levels])
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("throughput vs concurrency", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=100)
    plt.close(fig)
