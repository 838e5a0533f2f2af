"""Where should the resize to the model's input size happen: OpenCV on the CPU, or inside the graph?

One run, the same real 1080p frames, interleaved: (a) cv2.resize + BGR->RGB on the CPU, then the
engine at the model's size; (b) the engine with ``resize_in_graph`` fed the decoded 1080p BGR frame.
Also the bytes each choice moves to the device per frame (uint8 in, uint8 class ids out).

    .venv/bin/python benchmarks/resize_placement.py [--model M] [--frames 60] [--providers auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from segserve.bench.stats import ratio, summary
from segserve.engine import Engine, EngineConfig
from segserve.settings import default_model_path

VAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid" / "val" / "images"
RESULTS = Path(__file__).resolve().parent / "results"


def frames_1080p(count: int) -> list[np.ndarray]:
    paths = sorted(VAL.glob("*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"no frames in {VAL}")
    return [cv2.resize(cv2.imread(str(p)), (1920, 1080), interpolation=cv2.INTER_LINEAR) for p in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--providers", default="auto")
    args = parser.parse_args()

    cpu = Engine(EngineConfig(args.model, providers=args.providers, max_batch=1))
    graph = Engine(EngineConfig(args.model, providers=args.providers, max_batch=1, resize_in_graph=True))
    h, w = cpu.input_hw
    frames = frames_1080p(args.frames)
    for frame in frames[:3]:  # warm-up both, including the 1080p input shape
        cpu.run(cv2.cvtColor(cv2.resize(frame, (w, h)), cv2.COLOR_BGR2RGB)[None])
        graph.run(frame[None])

    times: dict[str, list[float]] = {"cpu_resize": [], "cpu_resize_only": [], "graph_resize": []}
    agree = []
    for _ in range(args.rounds):
        for frame in frames:
            t0 = time.perf_counter()
            rgb = cv2.cvtColor(cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
            t1 = time.perf_counter()
            a = cpu.run(rgb[None])
            t2 = time.perf_counter()
            b = graph.run(frame[None])
            t3 = time.perf_counter()
            times["cpu_resize"].append((t2 - t0) * 1e3)
            times["cpu_resize_only"].append((t1 - t0) * 1e3)
            times["graph_resize"].append((t3 - t2) * 1e3)
            agree.append(float(np.mean(a == b)))

    stats = {name: summary(values) for name, values in times.items()}
    result = {
        "what": "resize to the model input: OpenCV on the CPU vs inside the graph; 1080p BGR, batch 1",
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "providers": cpu.providers,
        "model": str(args.model),
        "input_hw": [h, w],
        "frames": len(frames) * args.rounds,
        "latency_ms": stats,
        "graph_over_cpu_p50": ratio(stats["graph_resize"]["p50"], stats["cpu_resize"]["p50"]),
        "bytes_to_device_per_frame": {"cpu_resize": h * w * 3, "graph_resize": 1920 * 1080 * 3},
        "bytes_from_device_per_frame": h * w,
        "mask_agreement": round(float(np.mean(agree)), 5),
        "versions": {"onnxruntime": ort.__version__, "opencv": cv2.__version__},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = cpu.providers[0].replace("ExecutionProvider", "").lower()
    out = RESULTS / f"resize-placement-{device}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"{'variant':<18}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}")
    for name, s in stats.items():
        print(f"{name:<18}{s['p50']:>9.2f}{s['p95']:>9.2f}{s['p99']:>9.2f}")
    print(
        f"graph/cpu p50 {result['graph_over_cpu_p50']}; "
        f"masks agree on {result['mask_agreement']:.2%} of pixels"
    )
    print(
        f"bytes to device per frame: cpu-resize {h * w * 3:,}, graph-resize {1920 * 1080 * 3:,}; wrote {out}"
    )


if __name__ == "__main__":
    main()
