"""The engine on a GPU, layer by layer, on 1080p JPEGs of real frames (p50/p95/p99 after warm-up):

- ``bare_ort``: ``session.run`` on RGB batches already at the model's size (the floor);
- ``cpu_decode``: JPEG decoded on the CPU (the CPU path, libjpeg-turbo), then ``engine.run``
  (IO binding, resize in graph);
- ``device_decode``: ``engine.run_encoded``: the JPEG bytes decoded on the GPU by nvImageCodec into the
  bound input, resized and normalised in the graph;
- the same two with CUDA graphs.

Usage: python benchmarks/gpu/engine_bench.py --providers cuda [--frames 500] [--out engine.json]
(`make gpu-check` runs it; with --providers cpu it runs anywhere, which is what its dry run does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "service"))

from segserve.bench.stats import summary  # noqa: E402
from segserve.codec import decode_encoded  # noqa: E402
from segserve.device_decode import EncodedFrame  # noqa: E402
from segserve.engine import Engine, EngineConfig  # noqa: E402
from segserve.graph import OUTPUT_NAME  # noqa: E402
from segserve.settings import SHIPPED_MODEL as MODEL  # noqa: E402

IMAGES = ROOT / "tests" / "fixtures" / "camvid"


def frames_1080p(count: int = 8) -> list[bytes]:
    """Real CamVid frames from the test fixtures, resized to 1920x1080 and saved as JPEG q90."""
    paths = sorted(IMAGES.glob("*/images/*.jpg"))[:count]
    if not paths:
        raise SystemExit(f"no frames under {IMAGES}")
    out = []
    for p in paths:
        image = cv2.resize(cv2.imread(str(p)), (1920, 1080), interpolation=cv2.INTER_LINEAR)
        out.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def timed(fn: Callable[[int], object], calls: int, warmup: int) -> list[float]:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def per_batch(times_ms: list[float], batch: int) -> dict:
    s = summary(times_ms)
    s["batch"] = batch
    s["frames"] = len(times_ms) * batch
    s["per_frame_ms_p50"] = round(s["p50"] / batch, 3)
    s["fps_at_p50"] = round(1000.0 * batch / s["p50"], 1)
    return s


def bench_provider(provider: str, jpegs: list[bytes], frames: int, batches: list[int], warmup: int) -> dict:
    out: dict = {}
    engines = {
        "": Engine(EngineConfig(MODEL, providers=provider, resize_in_graph=True, io_binding=True)),
    }
    if provider != "cpu":
        engines["_cuda_graph"] = Engine(
            EngineConfig(MODEL, providers=provider, resize_in_graph=True, io_binding=True, cuda_graph=True)
        )
    first = engines[""]
    out["providers_used"] = first.providers
    out["decode_device"] = first.decode_device
    out["decode_note"] = first.decode_note
    out["input_hw"] = list(first.input_hw)
    h, w = first.input_hw
    plain = Engine(EngineConfig(MODEL, providers=provider))
    pixels = [decode_encoded(d) for d in jpegs]
    model_rgb = [cv2.cvtColor(cv2.resize(p, (w, h)), cv2.COLOR_BGR2RGB) for p in pixels]
    encoded = [EncodedFrame.from_jpeg(d) for d in jpegs]

    def pick(seq: list, b: int, i: int) -> list:
        return [seq[(i * b + j) % len(seq)] for j in range(b)]

    for b in batches:
        calls = max(3, -(-frames // b))
        rgb = [np.stack(pick(model_rgb, b, i)) for i in range(len(jpegs))]
        out[f"bare_ort_b{b}"] = per_batch(
            timed(
                lambda i, r=rgb: plain.session.run([OUTPUT_NAME], {plain.input_name: r[i % len(r)]}),
                calls,
                warmup,
            ),
            b,
        )
        for suffix, engine in engines.items():

            def cpu_path(i: int, b: int = b, engine: Engine = engine) -> None:
                batch = np.stack([decode_encoded(d) for d in pick(jpegs, b, i)])
                engine.run(batch)

            out[f"cpu_decode{suffix}_b{b}"] = per_batch(timed(cpu_path, calls, warmup), b)
            if engine.decoder is not None:
                out[f"device_decode{suffix}_b{b}"] = per_batch(
                    timed(lambda i, b=b, e=engine: e.run_encoded(pick(encoded, b, i)), calls, warmup), b
                )
        out["bindings"] = {k or "plain": e.binding_count for k, e in engines.items()}
    # The two decode paths give the same masks (device JPEG decode within JPEG tolerance of the CPU's).
    cpu_ids = first.run(np.stack(pixels[: min(4, len(pixels))]))
    if first.decoder is not None:
        dev_ids = first.run_encoded(encoded[: len(cpu_ids)]).labels
        out["device_vs_cpu_decode_mask_agreement"] = round(float(np.mean(dev_ids == cpu_ids)), 5)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", default="cuda", help="comma list: cuda, tensorrt, cpu [cuda]")
    parser.add_argument("--frames", type=int, default=500, help="frames per figure after warm-up [500]")
    parser.add_argument("--batches", default="1,8", help="batch sizes [1,8]")
    parser.add_argument("--warmup", type=int, default=10, help="calls before timing [10]")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (else print it)")
    args = parser.parse_args(argv)
    try:
        import onnxruntime as ort

        ort.preload_dlls()  # CUDA and cuDNN from pip's nvidia packages, where they are
    except (AttributeError, OSError):
        pass
    jpegs = frames_1080p()
    result: dict = {
        "workload": "1080p JPEG (CamVid fixtures resized, q90) -> class ids at the model's input size",
        "frames_per_figure": args.frames,
        "warmup_calls": args.warmup,
    }
    for provider in [p.strip() for p in args.providers.split(",") if p.strip()]:
        print(f"engine bench: {provider} ...", flush=True)
        try:
            result[provider] = bench_provider(
                provider, jpegs, args.frames, [int(b) for b in args.batches.split(",")], args.warmup
            )
        except Exception as exc:  # one provider failing must not lose the others' figures
            result[provider] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"engine bench: {provider} failed: {exc}", flush=True)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
