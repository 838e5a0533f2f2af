"""`segserve serve | segment | info | demo | bench | dataset | train | export | eval`."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path

from segserve import config as cfg
from segserve import logs

log = logging.getLogger("segserve")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC segmentation server")
    opt = cfg.add_env_option
    opt(
        p, "--model", str(cfg.default_model_path()), help="ONNX model (served contract, or float NCHW logits)"
    )
    opt(p, "--host", "0.0.0.0", help="address to bind")
    opt(p, "--port", 50051, int, help="gRPC port (0: a free one, printed at start)")
    opt(p, "--providers", "auto", help="auto|cpu|cuda|tensorrt (auto: TensorRT > CUDA > CPU, as present)")
    opt(p, "--max-batch", 8, int, help="largest batch the dynamic batcher forms")
    opt(p, "--max-delay-ms", 2.0, float, help="longest wait for a batch to fill after its first frame")
    opt(
        p,
        "--max-inflight",
        32,
        int,
        help="frames admitted at once, all callers; unary beyond it: RESOURCE_EXHAUSTED",
    )
    opt(p, "--max-streams", 32, int, help="open StreamSegment calls at once")
    opt(p, "--max-inflight-per-stream", 4, int, help="frames of one stream in flight")
    opt(p, "--max-frame-bytes", 64 * 1024 * 1024, int, help="largest encoded/raw frame and gRPC message")
    opt(p, "--max-pixels", 8192 * 8192, int, help="largest frame in pixels")
    opt(p, "--intra-op-threads", 0, int, help="onnxruntime intra-op threads (0: all cores)")
    opt(
        p,
        "--ort-spinning",
        False,
        _flag,
        nargs="?",
        const=True,
        help="let onnxruntime's threads busy-wait between runs (off: leaves the CPU to the other stages)",
    )
    opt(
        p,
        "--resize-in-graph",
        False,
        _flag,
        nargs="?",
        const=True,
        help="resize and convert frames inside the graph, not with OpenCV",
    )
    opt(
        p,
        "--cuda-graph",
        False,
        _flag,
        nargs="?",
        const=True,
        help="capture each batch size as a CUDA graph (CUDA/TensorRT only)",
    )
    opt(p, "--trt-cache-dir", None, help="TensorRT engine and timing cache folder, kept across restarts")
    opt(
        p,
        "--mean",
        None,
        help="mean per channel for a float model, in its channel order and --input-range units "
        "(default: metadata or ImageNet)",
    )
    opt(p, "--std", None, help="std per channel for a float model, like --mean")
    opt(p, "--channel-order", None, help="rgb|bgr: the order the model takes (default: metadata, else rgb)")
    opt(
        p,
        "--input-range",
        None,
        help="0..1|0..255: the units of --mean/--std (default: metadata, else 0..255)",
    )
    opt(p, "--layout", None, help="nchw|nhwc, when the model's input shape leaves it open")
    opt(p, "--output", None, help="the output that holds the mask, when several could")
    opt(p, "--labels", None, help="label map: JSON map, list of names (a line each, or JSON), or cityscapes")
    opt(p, "--input-size", None, help="HxW for a model with a dynamic input size")
    opt(p, "--grace-s", 10.0, float, help="seconds to answer accepted frames at SIGTERM")
    opt(p, "--token-file", None, help="file holding the bearer token callers must send (or SEGSERVE_TOKEN)")
    opt(p, "--tls-cert", None, help="server certificate (PEM); enables TLS")
    opt(p, "--tls-key", None, help="server private key (PEM)")
    opt(p, "--tls-client-ca", None, help="CA (PEM) that client certificates must chain to: mutual TLS")
    opt(p, "--metrics-port", None, int, help="Prometheus /metrics HTTP port (off when unset)")
    opt(p, "--log-format", "text", help="text|json")
    opt(p, "--log-level", "info", help="debug|info|warning|error")
    p.set_defaults(func=_serve)


def _flag(text: str | bool) -> bool:
    return text if isinstance(text, bool) else text.strip().lower() in ("1", "true", "yes", "on")


def _token(args: argparse.Namespace) -> str | None:
    import os

    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("SEGSERVE_TOKEN") or None


def _serve(args: argparse.Namespace) -> int:
    from segserve.codec import Limits
    from segserve.edge.server import ServerConfig, TlsConfig, serve_until_signalled
    from segserve.engine import Engine, EngineConfig
    from segserve.errors import ModelError

    logs.setup(args.log_level, args.log_format)
    if bool(args.tls_cert) != bool(args.tls_key):
        log.error("--tls-cert and --tls-key go together")
        return 2
    tls = (
        TlsConfig(
            Path(args.tls_cert), Path(args.tls_key), Path(args.tls_client_ca) if args.tls_client_ca else None
        )
        if args.tls_cert
        else None
    )
    server_config = ServerConfig(
        host=args.host,
        port=args.port,
        max_message_bytes=args.max_frame_bytes + 1024 * 1024,
        max_inflight=args.max_inflight,
        max_streams=args.max_streams,
        max_inflight_per_stream=args.max_inflight_per_stream,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        grace_s=args.grace_s,
        token=_token(args),
        tls=tls,
        metrics_port=args.metrics_port,
        limits=Limits(max_frame_bytes=args.max_frame_bytes, max_pixels=args.max_pixels),
    )
    engine_config = EngineConfig(
        model=Path(args.model),
        providers=args.providers,
        intra_op_threads=args.intra_op_threads,
        spinning=args.ort_spinning,
        max_batch=args.max_batch,
        mean=cfg.parse_triple(args.mean),
        std=cfg.parse_triple(args.std),
        input_size=cfg.parse_size(args.input_size),
        resize_in_graph=args.resize_in_graph,
        cuda_graph=args.cuda_graph,
        trt_cache_dir=Path(args.trt_cache_dir) if args.trt_cache_dir else None,
        channel_order=args.channel_order,
        input_range=args.input_range,
        layout=args.layout,
        output=args.output,
        labels=args.labels,
    )
    try:
        engine = Engine(engine_config)
        engine.warm_up()
        asyncio.run(
            serve_until_signalled(
                engine,
                server_config,
                lambda server: print(f"segserve listening on {args.host}:{server.port}", flush=True),
            )
        )
    except (ModelError, OSError) as exc:
        log.error("%s", exc)
        return 1
    # Pool threads may still run work whose callers are gone: exit now, so the grace period is true.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


def _add_connection(p: argparse.ArgumentParser, token: bool = True) -> None:
    """--server, --token and the TLS options of the commands that call a running server."""
    p.add_argument("--server", default=cfg.env_default("--server", "localhost:50051"))
    if token:
        p.add_argument("--token", default=cfg.env_default("--token"), help="bearer token")
    p.add_argument("--tls-ca", default=cfg.env_default("--tls-ca"), help="CA (PEM) of the server: use TLS")
    p.add_argument("--tls-client-cert", default=cfg.env_default("--tls-client-cert"), help="for mutual TLS")
    p.add_argument("--tls-client-key", default=cfg.env_default("--tls-client-key"), help="for mutual TLS")


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _client_cert(args: argparse.Namespace) -> tuple[Path, Path] | None:
    if bool(args.tls_client_cert) != bool(args.tls_client_key):
        raise SystemExit("error: --tls-client-cert and --tls-client-key go together")
    return (Path(args.tls_client_cert), Path(args.tls_client_key)) if args.tls_client_cert else None


def _client(args: argparse.Namespace, **kwargs):
    from segserve.client import SegmenterClient

    return SegmenterClient(
        args.server,
        token=args.token,
        root_certificates=_path(args.tls_ca),
        client_cert=_client_cert(args),
        **kwargs,
    )


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment one image file on a running server")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, default=Path("segment-output"), help="folder for mask, overlay, JSON")
    _add_connection(p)
    p.set_defaults(func=_segment)


def _segment(args: argparse.Namespace) -> int:
    import json

    import cv2
    import grpc

    from segserve.labels import mask_to_training_rgb

    if not args.image.is_file():
        print(f"error: no such image: {args.image}", file=sys.stderr)
        return 2
    with _client(args, send="jpeg") as client:
        try:
            result = client.segment(args.image.read_bytes(), args.image.stem, overlay="png", coverage=True)
            labels = client.model_info().labels
        except grpc.RpcError as exc:
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.image.stem
    cv2.imwrite(str(args.out / f"{stem}_mask.png"), result.mask)
    cv2.imwrite(str(args.out / f"{stem}_labels.png"), mask_to_training_rgb(result.mask))
    cv2.imwrite(str(args.out / f"{stem}_color.png"), labels.colorize(result.mask))
    cv2.imwrite(str(args.out / f"{stem}_overlay.png"), result.overlay)
    summary = {
        "frame_id": result.frame_id,
        "model": result.model,
        "coverage": result.coverage,
        "timing_us": vars(result.timing),
    }
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/{stem}_{{mask,labels,color,overlay}}.png and {stem}.json")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a running server's model info")
    _add_connection(p)
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    import grpc

    with _client(args) as client:
        try:
            info = client.model_info()
        except grpc.RpcError as exc:
            print(f"error: {args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(
        f"{info.name}@{info.version} input {info.input_size[0]}x{info.input_size[1]} "
        f"providers {info.providers}"
    )
    for c in info.labels.classes:
        print(f"  {c.id:3d} {c.name:<16} rgb{c.color}")
    return 0


def _add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="exit 0 when a server reports SERVING (for Docker HEALTHCHECK, probes)")
    _add_connection(p, token=False)
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from segserve.client import open_channel

    with open_channel(args.server, _path(args.tls_ca), _client_cert(args)) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"{args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.server}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


# Sub-commands that live with their own package: (module, function that registers them).
_PLUGINS = ("segserve.demo.cli", "segserve.bench.cli", "segserve.train.cli", "segserve.inspect_model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_segment(sub)
    _add_info(sub)
    _add_health(sub)
    for module in _PLUGINS:
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as exc:
            if not exc.name or not module.startswith(exc.name):
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
