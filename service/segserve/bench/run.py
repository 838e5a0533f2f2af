"""The benchmark run: every layer on the same frames, then JSON, PNG plots and a table."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segserve.bench import measure
from segserve.bench.frames import load_frame_sets, model_inputs
from segserve.bench.stats import ratio, summary
from segserve.demo.errors import DemoError

if TYPE_CHECKING:
    from segserve.types import FrameRequest, FrameResult


def default_out() -> Path:
    return Path("bench-results")


@dataclass
class BenchConfig:
    model: Path
    providers: str = "auto"
    images: Path | None = None  # required: a folder of real frames
    video: Path | None = None
    out: Path = Path("bench-results")
    quick: bool = False
    frames: int | None = None  # frames per measurement (default 100, quick 16)
    max_batch: int = 8
    streams: tuple[int, ...] = (1, 2, 4, 8)
    stream_window: int = 1
    gpu: bool = False
    server: str | None = None  # measure an existing server instead of starting one
    intra_op_threads: int = 0
    naive: Path | None = None  # the naive reference module (benchmarks/naive_pipeline.py); None: skipped
    tag: str = ""
    quiet: bool = False

    @property
    def count(self) -> int:
        return self.frames or (16 if self.quick else 100)

    @property
    def warmup(self) -> int:
        return 2 if self.quick else 5


def _versions() -> dict:
    import cv2
    import grpc
    import onnxruntime
    from google import protobuf

    import segserve

    return {
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "protobuf": protobuf.__version__,
        "segserve": getattr(segserve, "__version__", ""),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for children,
    monotonic time); None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(values) - values[3] - values[4]) / tick
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.monotonic()


def other_processes_share(start, end) -> float | None:
    """Share of all CPUs that other processes used between two snapshots (0..1): the run's noise."""
    if start is None or end is None:
        return None
    wall = end[2] - start[2]
    others = (end[0] - start[0]) - (end[1] - start[1])
    return round(max(0.0, others) / (wall * (os.cpu_count() or 1)), 3) if wall > 0 else None


def _load_naive(path: Path | None):
    if path is None or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("segserve_naive_pipeline", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


class LoopPipeline:
    """The served pipeline, called from the benchmark's threads through the server's event loop."""

    def __init__(self, running):
        self._running = running

    def process(self, request: FrameRequest) -> FrameResult:
        return self._running.call(self._running.service.pipeline.process(request))


def run(cfg: BenchConfig) -> dict:
    """Measure everything; returns the results dict (also written to ``cfg.out``)."""
    import onnxruntime as ort

    from segserve.bench.core import extract_float_core
    from segserve.demo.server_process import ServerProcess
    from segserve.edge.server import ServerConfig, create_server
    from segserve.engine import Engine, EngineConfig, session_options

    say = (lambda *a: None) if cfg.quiet else (lambda *a: print(*a, flush=True))
    if cfg.images is None:
        raise DemoError("give --images DIR: a folder of real frames to measure on")
    if not Path(cfg.model).is_file():
        raise DemoError(f"model not found: {cfg.model} (give --model PATH)")
    providers = cfg.providers
    gpu_note = ""
    if cfg.gpu:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = "cuda" if cfg.providers == "auto" else cfg.providers
        else:
            gpu_note = (
                "--gpu: no CUDA provider in this onnxruntime; measured on CPU (transfers are host copies)"
            )
            say(gpu_note)
    n, warm = cfg.count, cfg.warmup
    load_start = os.getloadavg()
    cpu_start = _cpu_snapshot()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        say(
            f"note: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs: other processes are busy, the "
            "figures will be slower and noisier than on an idle machine (the JSON records the load)"
        )
    started = time.perf_counter()

    say(f"loading frames from {cfg.images} and {cfg.video} ...")
    sets = load_frame_sets(cfg.images, cfg.video, n)
    hd = sets["camvid_1080p"]

    engine_config = EngineConfig(
        Path(cfg.model), providers=providers, intra_op_threads=cfg.intra_op_threads, max_batch=cfg.max_batch
    )
    server_config = ServerConfig(host="127.0.0.1", port=0, max_batch=cfg.max_batch)
    engine = Engine(engine_config)
    engine.warm_up()
    local = create_server(engine, server_config)  # the served pipeline, on its own event loop
    meta_model = engine.metadata
    inputs = model_inputs(sets[next(iter(sets))], engine.input_hw)
    results: dict = {"layers": {}}
    layers = results["layers"]

    batch_sizes = (
        list(range(1, engine.max_batch + 1)) if not cfg.quick else sorted({1, 2, min(4, engine.max_batch)})
    )
    batch_sizes = [b for b in batch_sizes if b <= engine.max_batch]
    say(f"bare ONNX Runtime, batch {batch_sizes} ...")
    layers["bare_ort"] = measure.bare_ort(engine.session, engine.input_name, inputs, batch_sizes, n, warm)
    layers["transfers"] = measure.transfers(engine, inputs, [1, max(batch_sizes)], min(n, 40))

    naive_module = _load_naive(cfg.naive)
    if naive_module is None:
        say("naive reference skipped (give --naive benchmarks/naive_pipeline.py from a clone for ratio (a))")
    try:
        core = extract_float_core(engine_model_proto(engine_config))
        core_session = ort.InferenceSession(
            core.model.SerializeToString(),
            sess_options=session_options(cfg.intra_op_threads),
            providers=engine.providers,
        )
        say("float network alone (batch 1) ...")
        layers["float_network"] = measure.float_core(
            core_session, core.input_name, inputs, meta_model.mean, meta_model.std, n, warm
        )
        layers["float_network"]["left_out"] = [*core.pre_ops, "ArgMax", "Cast"]
    except ValueError as exc:
        core_session = core = None
        layers["float_network"] = {"error": str(exc)}

    pipeline = LoopPipeline(local)
    naive = None
    if naive_module is not None and core_session is not None and core is not None:
        palette = np.zeros((256, 3), np.uint8)
        for c in meta_model.labels.classes:
            palette[c.id] = c.color
        naive = naive_module.NaivePipeline(
            core_session, core.input_name, engine.input_hw, meta_model.mean, meta_model.std, palette
        )

    server = None
    target = cfg.server
    if target is None:
        say("starting `segserve serve` for the gRPC layers ...")
        server = ServerProcess(
            Path(cfg.model),
            (
                "--providers",
                providers,
                "--max-batch",
                str(cfg.max_batch),
                "--intra-op-threads",
                str(cfg.intra_op_threads),
                "--log-level",
                "warning",
            ),
        )
        target = server.start()
    try:
        say(
            f"1080p, one frame at a time, interleaved: in-process pipeline, naive reference, "
            f"Segment RPC on {target} ..."
        )
        _sequential_layers(layers, pipeline, naive, target, f"127.0.0.1:{local.port}", hd.jpegs, n, warm)
        for name, frame_set in sets.items():
            if name != hd.name:
                say(f"in-process pipeline, {name} ({frame_set.width}x{frame_set.height}) ...")
                layers[f"inprocess_{name}"] = measure.pipeline_sequential(
                    pipeline, frame_set.jpegs, max(8, n // 2), warm
                )
        for key in ("inprocess_threads", "segment_rpc_threads", "stream"):
            layers[key] = {}
        for k in cfg.streams:
            say(f"{k} concurrent: in-process threads, Segment RPC threads, StreamSegment streams ...")
            layers["inprocess_threads"][str(k)] = measure.pipeline_concurrent(pipeline, hd.jpegs, k, n, warm)
            layers["segment_rpc_threads"][str(k)] = measure.segment_rpc_concurrent(
                target, hd.jpegs, k, n, warm
            )
            layers["stream"][str(k)] = measure.stream_segment(target, hd.jpegs, k, n, cfg.stream_window)
        say("1 and 8 callers: ModelInfer (Open Inference Protocol) and Segment with the same outputs ...")
        layers["model_infer"] = measure.model_infer_vs_segment(target, meta_model.name, hd.jpegs, n, warm)
    finally:
        if server is not None:
            server.stop()
    local.drain_and_stop(1.0)  # also closes the service

    results["ratios"], results["acceptance"] = ratios(layers)
    results["meta"] = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_start": [round(v, 2) for v in load_start],
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "other_processes_cpu_share": other_processes_share(cpu_start, _cpu_snapshot()),
        },
        "versions": _versions(),
        "providers_available": ort.get_available_providers(),
        "providers_used": engine.providers,
        "device": engine.device,
        "model": {
            "path": str(cfg.model),
            "name": meta_model.name,
            "version": meta_model.version,
            "sha256": engine.sha256,
            "input_hw": list(engine.input_hw),
            "classes": len(meta_model.labels),
            "dynamic_batch": meta_model.dynamic_batch,
            "wrapped": meta_model.wrapped,
        },
        "frames": {name: s.describe() for name, s in sets.items()},
        "workload": "JPEG in; PNG class-id mask and JPEG overlay (q85, alpha 0.5) out, both at the "
        "frame's size",
        "settings": {
            "frames_per_measurement": n,
            "warmup": warm,
            "quick": cfg.quick,
            "max_batch": cfg.max_batch,
            "max_delay_ms": server_config.max_delay_ms,
            "intra_op_threads": cfg.intra_op_threads,
            "stream_window": cfg.stream_window,
            "streams": list(cfg.streams),
            "server": cfg.server or "subprocess `segserve serve` on 127.0.0.1",
        },
        "seconds": round(time.perf_counter() - started, 1),
        "tag": cfg.tag,
        "gpu_requested": cfg.gpu,
        "note": gpu_note,
    }
    return results


def _sequential_layers(
    layers: dict, pipeline, naive, target: str, local_target: str, jpegs: list[bytes], n: int, warm: int
) -> None:
    """In-process, naive and Segment RPC (to the subprocess server, and to a server in this process over
    the very same pipeline) on the same frames, taking turns in blocks."""
    import grpc

    from segserve._proto.segmentation.v1 import segmentation_pb2_grpc as pb_grpc
    from segserve.types import FrameRequest

    timings, naive_stages, server_total, sizes, server_timings = [], [], [], [], []
    reqs = measure.requests(jpegs, len(jpegs))
    local_timings: list = []
    with (
        grpc.insecure_channel(target, options=measure.CHANNEL_OPTIONS) as channel,
        grpc.insecure_channel(local_target, options=measure.CHANNEL_OPTIONS) as local_channel,
    ):
        stub = pb_grpc.SegmenterStub(channel)
        local_stub = pb_grpc.SegmenterStub(local_channel)

        def ours(i: int) -> None:
            request = FrameRequest(frame_id=str(i), encoded=jpegs[i % len(jpegs)], options=measure.OPTIONS)
            timings.append(pipeline.process(request).timing)

        def rpc(i: int) -> None:
            response = stub.Segment(reqs[i % len(reqs)], timeout=60)
            server_total.append(response.timing.total_us / 1000)
            server_timings.append(response.timing)
            sizes.append(response.ByteSize())

        def rpc_local(i: int) -> None:
            local_timings.append(local_stub.Segment(reqs[i % len(reqs)], timeout=60).timing)

        calls = {"inprocess": ours, "segment_rpc": rpc, "segment_rpc_same_process": rpc_local}
        if naive is not None:
            calls["naive"] = lambda i: naive_stages.append(naive.process(jpegs[i % len(jpegs)]).stages_ms)
        times = measure.interleaved(calls, n, warm, block=4 if n < 40 else 10)
    for name, values in times.items():
        layers[name] = summary(values)
    layers["inprocess"]["stages_mean"] = measure._timing_means(timings)
    layers["inprocess_camvid_1080p"] = layers["inprocess"]
    layers["segment_rpc"]["server_total_ms"] = summary(server_total)
    layers["segment_rpc"]["server_stages_mean"] = measure._timing_means(server_timings)
    layers["segment_rpc"]["mean_response_kb"] = round(float(np.mean(sizes)) / 1024, 1)
    layers["segment_rpc_same_process"]["server_stages_mean"] = measure._timing_means(local_timings)
    if naive is not None:
        kept = naive_stages
        layers["naive"]["stages_mean"] = {
            k + "_ms": round(float(np.mean([s[k] for s in kept])), 3) for k in kept[0]
        }


def engine_model_proto(engine_config):
    from segserve.graph import prepare_model

    return prepare_model(
        engine_config.model, engine_config.mean, engine_config.std, engine_config.input_size
    ).model


def _p50(layer: dict | None) -> float | None:
    return None if not layer or "p50" not in layer else layer["p50"]


def ratios(layers: dict) -> tuple[dict, dict]:
    bare = _p50(layers["bare_ort"].get("1"))
    out: dict = {"to_bare_ort_p50": {}}
    for name in ("float_network", "inprocess", "segment_rpc", "naive"):
        out["to_bare_ort_p50"][name] = ratio(_p50(layers.get(name)), bare)
    for k, s in layers.get("stream", {}).items():
        out["to_bare_ort_p50"][f"stream_{k}"] = ratio(s.get("p50"), bare)
        out["to_bare_ort_p50"][f"stream_{k}_per_frame_cost"] = ratio(s.get("per_frame_cost_ms"), bare)
    for k, s in layers.get("inprocess_threads", {}).items():
        out["to_bare_ort_p50"][f"inprocess_{k}_threads_per_frame_cost"] = ratio(
            s.get("per_frame_cost_ms"), bare
        )

    acceptance: dict = {}
    net = _p50(layers.get("float_network"))
    ours, naive = _p50(layers.get("inprocess")), _p50(layers.get("naive"))
    if net is not None and ours is not None and naive is not None:
        ours_around, naive_around = ours - net, naive - net
        acceptance["a_around_network_speedup"] = {
            "value": ratio(naive_around, ours_around),
            "target": ">= 3",
            "pass": bool(ours_around > 0 and naive_around / ours_around >= 3),
            "ours_around_ms": round(ours_around, 3),
            "naive_around_ms": round(naive_around, 3),
            "network_ms": net,
            "definition": "(p50 total - p50 of the float network alone) naive / ours, 1080p JPEG in, "
            "PNG mask + JPEG overlay out, one frame at a time",
        }
    rpc = _p50(layers.get("segment_rpc"))
    b = ratio(rpc, ours)
    acceptance["b_segment_rpc_over_inprocess_p50"] = {
        "value": b,
        "target": "<= 1.15",
        "pass": b is not None and b <= 1.15,
        "same_process_server": ratio(_p50(layers.get("segment_rpc_same_process")), ours),
        "definition": "p50 of Segment to the `segserve serve` subprocess / p50 of Pipeline.process, "
        "same frames taking turns; same_process_server: the server runs in the benchmark's process "
        "over the very pipeline object measured in-process",
    }
    s4 = layers.get("stream", {}).get("4", {}).get("per_frame_cost_ms")
    i4 = layers.get("inprocess_threads", {}).get("4", {}).get("per_frame_cost_ms")
    c = ratio(s4, i4)
    acceptance["c_stream4_over_inprocess4_per_frame_cost"] = {
        "value": c,
        "target": "<= 1.25",
        "pass": c is not None and c <= 1.25,
        "definition": "wall time / frames with 4 StreamSegment streams (1 frame in flight each) vs 4 threads "
        "calling Pipeline.process",
    }
    acceptance.update(model_infer_acceptance(layers))
    acceptance.update(outside_server_acceptance(layers))
    return out, acceptance


def outside_server_acceptance(layers: dict) -> dict:
    """p50 of (client-observed latency - the server's total_us) for Segment at 1 and 8 callers."""
    out = {}
    for k in ("1", "8"):
        row = layers.get("segment_rpc_threads", {}).get(k, {}).get("outside_server_ms")
        if not row:
            continue
        value = row["p50"]
        out[f"e_outside_server_p50_ms_{k}_callers"] = {
            "value": value,
            "target": "<= 3 ms" if k == "8" else "(reported)",
            "pass": value <= 3.0 if k == "8" else True,
            "definition": f"p50 over Segment calls from {k} concurrent caller(s), 1080p JPEGs: latency the "
            "client observed minus the server's own Timing.total_us",
        }
    return out


def model_infer_acceptance(layers: dict) -> dict:
    """ModelInfer's p50 over Segment's (same frames, same outputs, same run), per caller count."""
    out = {}
    for k, row in layers.get("model_infer", {}).items():
        if not isinstance(row, dict) or "p50_ratio" not in row:
            continue
        value = row["p50_ratio"]
        out[f"d_model_infer_over_segment_p50_{k}_callers"] = {
            "value": value,
            "target": "<= 1.10",
            "pass": value is not None and value <= 1.10,
            "definition": "p50 of ModelInfer (tritonclient's request: IMAGE JPEG in, labels + overlay "
            "out) / p50 of Segment with the same outputs (raw mask at the model's size + JPEG overlay), "
            f"{k} caller(s), each alternating between the two (one channel per method)",
        }
    return out


# --- output ----------------------------------------------------------------------------------------
def _row(name: str, s: dict, bare: float | None, extra: str = "") -> str:
    def f(v):
        return "" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    r = ratio(s.get("p50"), bare)
    cost = s.get("per_frame_cost_ms")
    fps = s.get("fps")
    return (
        f"| {name} | {f(s.get('p50'))} | {f(s.get('p95'))} | {f(s.get('p99'))} | {f(cost)} | "
        f"{'' if fps is None else f'{fps:.1f}'} | {'' if r is None else f'{r:.2f}x'} | {extra} |"
    )


def table(results: dict) -> str:
    layers = results["layers"]
    bare = _p50(layers["bare_ort"].get("1"))
    lines = [
        "| layer | p50 ms | p95 ms | p99 ms | per-frame cost ms | FPS | p50 / bare ORT b1 "
        "| batch sizes seen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b, s in layers["bare_ort"].items():
        lines.append(
            _row(f"bare ORT, batch {b} (per call)", {**s, "per_frame_cost_ms": s["per_frame_ms"]}, bare)
        )
    if "p50" in layers.get("float_network", {}):
        lines.append(_row("float network alone, batch 1", layers["float_network"], bare))
    for key, s in layers.items():
        if key.startswith("inprocess_camvid") or key.startswith("inprocess_clip"):
            lines.append(_row(f"in-process pipeline, {key.removeprefix('inprocess_')}", s, bare))
    for k, s in layers.get("inprocess_threads", {}).items():
        lines.append(_row(f"in-process pipeline, 1080p, {k} threads", s, bare, _hist(s)))
    if "naive" in layers:
        lines.append(_row("naive numpy reference, 1080p", layers["naive"], bare))
    lines.append(
        _row("Segment RPC, 1080p (server: `segserve serve` subprocess)", layers["segment_rpc"], bare)
    )
    if "segment_rpc_same_process" in layers:
        lines.append(
            _row(
                "Segment RPC, 1080p (server in the bench process, same pipeline object)",
                layers["segment_rpc_same_process"],
                bare,
            )
        )
    for k, s in layers.get("segment_rpc_threads", {}).items():
        lines.append(_row(f"Segment RPC, 1080p, {k} threads", s, bare, _hist(s)))
    for k, s in layers.get("stream", {}).items():
        lines.append(_row(f"StreamSegment, 1080p, {k} streams", s, bare, _hist(s)))
    for k, row in layers.get("model_infer", {}).items():
        if isinstance(row, dict) and "model_infer" in row:
            lines.append(
                _row(
                    f"Segment, ModelInfer's outputs, 1080p, {k} callers",
                    row["segment"],
                    bare,
                    _hist(row["segment"]),
                )
            )
            lines.append(
                _row(
                    f"ModelInfer (OIP), 1080p, {k} callers",
                    row["model_infer"],
                    bare,
                    _hist(row["model_infer"]),
                )
            )
    lines.append("")
    for key, a in results["acceptance"].items():
        mark = "PASS" if a["pass"] else "FAIL"
        lines.append(f"- {key}: {a['value']} (target {a['target']}) {mark}")
        if a.get("same_process_server") is not None:
            lines.append(
                f"  - server in the bench process (same pipeline object): {a['same_process_server']}"
            )
    return "\n".join(lines)


def _hist(s: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in s.get("batch_sizes", {}).items())


def write(results: dict, out_root: Path) -> Path:
    meta = results["meta"]
    stamp = meta["timestamp"].replace(":", "").replace("-", "")[:15]
    name = f"{stamp}_{meta['model']['name']}_{meta['device']}{'_' + meta['tag'] if meta['tag'] else ''}"
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    (out / "table.md").write_text(_header(results) + "\n\n" + text + "\n")
    from segserve.bench.plots import plot_all

    plot_all(results, out)
    return out


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share:.0%}"


def _header(results: dict) -> str:
    m = results["meta"]
    machine, model, v = m["machine"], m["model"], m["versions"]
    h, w = model["input_hw"]
    return (
        f"{m['timestamp']} | {machine['cpu']} x{machine['cpu_count']} | load "
        f"{machine['load_average_start']} -> {machine['load_average_end']}, other processes used "
        f"{_pct(machine.get('other_processes_cpu_share'))} of the CPUs | {m['providers_used'][0]} | "
        f"model {model['name']}@{model['version']} "
        f"{w}x{h} | ORT {v['onnxruntime']}, grpcio {v['grpcio']}, numpy {v['numpy']}, OpenCV {v['opencv']} | "
        f"{m['settings']['frames_per_measurement']} frames per figure"
    )
