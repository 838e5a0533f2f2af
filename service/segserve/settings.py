"""One validated settings object for ``segserve serve``, and the options of the client commands.

``ServeSettings`` is built from flags that each default to a ``SEGSERVE_*`` variable (see
``segserve.options``), checks what no single flag can (TLS pairs, bounds that must nest), and derives
the engine's and the server's configuration from the same values: one ``max_batch`` feeds both.

Plain argparse + a frozen dataclass rather than pydantic-settings: the CLI already is argparse with
subcommands registered by optional packages, and lazy per-subcommand environment reading plus
messages that name the flag or variable take a few dozen lines here, not another dependency.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segserve import options as o
from segserve.options import Option, Size, UsageError

if TYPE_CHECKING:
    from segserve.engine import EngineConfig

MIB = 1024 * 1024
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "segserve-camvid.onnx"
"""The default model, inside the package (package data), so an installed wheel serves it anywhere."""


def shipped_model() -> Path:
    return SHIPPED_MODEL


def default_model_path() -> Path:
    """$SEGSERVE_MODEL, else the shipped model."""
    return Path(os.environ.get("SEGSERVE_MODEL") or SHIPPED_MODEL)


def env_default(flag: str, default: str | None = None) -> str | None:
    """The text of SEGSERVE_<FLAG> (no conversion, so it cannot fail), else ``default``."""
    return os.environ.get("SEGSERVE_" + flag.lstrip("-").replace("-", "_").upper()) or default


def _server_types():
    """The one place that knows where the server's configuration classes live."""
    from segserve.edge.server import ServerConfig, TlsConfig

    return ServerConfig, TlsConfig


def label_spec(text: str) -> str:
    """A label-map file, or a built-in map's name (checked here; its content is read with the model)."""
    from segserve.labels import BUILT_IN

    if text.strip().lower() in BUILT_IN:
        return text.strip().lower()
    if Path(text).expanduser().is_file():
        return str(Path(text).expanduser())
    raise ValueError(f"expected a label-map file or one of {', '.join(sorted(BUILT_IN))}, got {text!r}")


MODEL_OPTIONS: tuple[Option, ...] = (
    Option(
        "--providers",
        "auto|cpu|cuda|tensorrt, or a comma list (auto: TensorRT > CUDA > CPU, as present)",
        "auto",
    ),
    Option("--max-batch", "largest batch the dynamic batcher forms (engine and batcher)", 8, o.integer(1)),
    Option(
        "--input-size",
        "WxH input size for a model whose size is dynamic",
        None,
        o.size,
        shown="the model's",
        metavar="WxH",
    ),
    Option(
        "--channel-order",
        "channel order the model takes",
        None,
        o.choice("rgb", "bgr"),
        shown="the model's metadata, else rgb",
        metavar="rgb|bgr",
    ),
    Option(
        "--input-range",
        "units of a float input (and of --mean/--std)",
        None,
        o.choice("0..1", "0..255"),
        shown="the model's metadata, else 0..255",
        metavar="0..1|0..255",
    ),
    Option(
        "--mean",
        "mean per channel, in the model's channel order and --input-range units",
        None,
        o.triple,
        shown="the model's metadata, else ImageNet's",
        metavar="C1,C2,C3",
    ),
    Option(
        "--std",
        "standard deviation per channel, in the model's channel order and --input-range units",
        None,
        o.triple,
        shown="the model's metadata, else ImageNet's",
        metavar="C1,C2,C3",
    ),
    Option(
        "--layout",
        "input layout, when the input's shape leaves it open",
        None,
        o.choice("nchw", "nhwc"),
        shown="the model's metadata, else its input shape",
        metavar="nchw|nhwc",
    ),
    Option(
        "--output",
        "the output that holds the mask, when several could",
        None,
        shown="the model's metadata, else the only mask-like output",
        metavar="NAME",
    ),
    Option(
        "--labels",
        "label map: a JSON map, a list of names (a line each, or JSON), or a built-in name",
        None,
        label_spec,
        shown="beside the model (.labels.json), else its metadata, else class_N",
        metavar="FILE|cityscapes",
    ),
)
"""How to read a model: ``serve`` and ``inspect`` take these same flags, validated the same way."""


SERVE_OPTIONS: tuple[Option, ...] = (
    Option(
        "--model",
        "ONNX model: the served contract, or float NCHW logits to wrap",
        SHIPPED_MODEL,
        o.existing_file,
        shown="the shipped segserve-camvid model",
        metavar="PATH",
    ),
    Option("--host", "address to bind", "0.0.0.0"),
    Option("--port", "gRPC port; 0 picks a free one, printed at start", 50051, o.port),
    *MODEL_OPTIONS,
    Option("--max-delay-ms", "longest wait for a batch to fill after its first frame", 2.0, o.number(0)),
    Option(
        "--max-inflight",
        "frames admitted at once, all callers; unary beyond it: RESOURCE_EXHAUSTED",
        32,
        o.integer(1),
    ),
    Option("--max-streams", "open StreamSegment calls at once", 32, o.integer(1)),
    Option("--max-inflight-per-stream", "frames of one stream in flight", 4, o.integer(1)),
    Option(
        "--max-frame-bytes",
        "largest encoded or raw frame; the gRPC message limit is this plus 1 MiB",
        64 * MIB,
        o.integer(1),
        shown="64 MiB = 67108864",
    ),
    Option(
        "--max-pixels", "largest frame in pixels", 8192 * 8192, o.integer(1), shown="8192x8192 = 67108864"
    ),
    Option(
        "--max-jpeg-scans",
        "most scans a progressive JPEG may have (cameras write about 10)",
        64,
        o.integer(1),
    ),
    Option("--max-frame-id-bytes", "longest frame_id; longer: INVALID_ARGUMENT", 256, o.integer(1)),
    Option(
        "--max-buffered-bytes",
        "requests and unwritten responses held, all callers together",
        128 * MIB,
        o.integer(1),
        shown="128 MiB = 134217728",
    ),
    Option(
        "--max-stream-buffered-bytes",
        "unwritten responses held for one stream",
        4 * MIB,
        o.integer(1),
        shown="4 MiB = 4194304",
    ),
    Option(
        "--stream-idle-s",
        "a stream that sends nothing for this many seconds is closed",
        30.0,
        o.number(0, above=True),
    ),
    Option("--intra-op-threads", "onnxruntime intra-op threads (0: all cores)", 0, o.integer(0)),
    Option(
        "--ort-spinning",
        "let onnxruntime's threads busy-wait between runs (off leaves the CPU to the other stages)",
        False,
        switch=True,
    ),
    Option(
        "--resize-in-graph", "resize and convert frames inside the graph, not with OpenCV", False, switch=True
    ),
    Option(
        "--cuda-graph", "capture each batch size as a CUDA graph (CUDA/TensorRT only)", False, switch=True
    ),
    Option(
        "--device-decode",
        "decode JPEG frames on the GPU with their batch (nvImageCodec; needs --resize-in-graph and a GPU "
        "provider). auto: where possible, else on the CPU (the log says why); on: required; off: CPU",
        "auto",
        o.choice("auto", "on", "off"),
        metavar="auto|on|off",
    ),
    Option(
        "--trt-cache-dir",
        "TensorRT engine and timing cache folder, kept across restarts",
        None,
        o.path,
        shown="~/.cache/segserve/trt",
        metavar="DIR",
    ),
    Option("--grace-s", "seconds to answer accepted frames at SIGTERM", 10.0, o.number(0)),
    Option(
        "--token-file",
        "file holding the bearer token callers must send; SEGSERVE_TOKEN may hold the token itself",
        None,
        o.existing_file,
        shown="no token",
        metavar="PATH",
    ),
    Option("--tls-cert", "server certificate (PEM); enables TLS", None, o.existing_file, metavar="PATH"),
    Option("--tls-key", "server private key (PEM)", None, o.existing_file, metavar="PATH"),
    Option(
        "--tls-client-ca",
        "CA (PEM) client certificates must chain to: mutual TLS",
        None,
        o.existing_file,
        metavar="PATH",
    ),
    Option("--metrics-port", "Prometheus /metrics HTTP port; 0 picks a free one", None, o.port, shown="off"),
    Option("--metrics-host", "address the /metrics listener binds", "127.0.0.1"),
    Option("--max-metrics-connections", "open /metrics connections at once", 16, o.integer(1)),
    Option(
        "--metrics-idle-s",
        "seconds a /metrics connection may stay silent before it is closed",
        10.0,
        o.number(0, above=True),
    ),
    Option("--log-format", "text or json", "text", o.choice("text", "json"), metavar="text|json"),
    Option(
        "--log-level",
        "debug, info, warning or error",
        "info",
        o.choice("debug", "info", "warning", "error"),
        metavar="LEVEL",
    ),
)


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``segserve serve`` was told, validated; builds the engine and server configs."""

    model: Path = SHIPPED_MODEL
    host: str = "0.0.0.0"
    port: int = 50051
    providers: str = "auto"
    max_batch: int = 8
    max_delay_ms: float = 2.0
    max_inflight: int = 32
    max_streams: int = 32
    max_inflight_per_stream: int = 4
    max_frame_bytes: int = 64 * MIB
    max_pixels: int = 8192 * 8192
    max_jpeg_scans: int = 64
    max_frame_id_bytes: int = 256
    max_buffered_bytes: int = 128 * MIB
    max_stream_buffered_bytes: int = 4 * MIB
    stream_idle_s: float = 30.0
    intra_op_threads: int = 0
    ort_spinning: bool = False
    resize_in_graph: bool = False
    cuda_graph: bool = False
    device_decode: str = "auto"
    trt_cache_dir: Path | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: Size | None = None
    channel_order: str | None = None
    input_range: str | None = None
    layout: str | None = None
    output: str | None = None
    labels: str | None = None
    grace_s: float = 10.0
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    max_metrics_connections: int = 16
    metrics_idle_s: float = 10.0
    log_format: str = "text"
    log_level: str = "info"

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise UsageError("--tls-cert and --tls-key go together: give both for TLS, or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        if self.std is not None and min(self.std) <= 0:
            raise UsageError(f"--std must be above 0 for every channel, got {self.std}")
        if self.max_inflight_per_stream > self.max_inflight:
            raise UsageError(
                f"--max-inflight-per-stream ({self.max_inflight_per_stream}) is over --max-inflight "
                f"({self.max_inflight}): lower it or raise --max-inflight"
            )
        if self.max_stream_buffered_bytes > self.max_buffered_bytes:
            raise UsageError(
                f"--max-stream-buffered-bytes ({self.max_stream_buffered_bytes}) is over "
                f"--max-buffered-bytes ({self.max_buffered_bytes}): lower it or raise the total"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeSettings:
        """From parsed ``serve`` arguments (after ``options.resolve_env``)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @classmethod
    def for_model(cls, model: Path, args: argparse.Namespace) -> ServeSettings:
        """What ``serve --model MODEL`` would use, from parsed arguments holding only MODEL_OPTIONS."""
        return cls(model=model, **{opt.dest: getattr(args, opt.dest) for opt in MODEL_OPTIONS})

    def token(self) -> str | None:
        """The token callers must send: the --token-file's content, else SEGSERVE_TOKEN."""
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
            if not token:
                raise UsageError(f"--token-file {self.token_file} is empty: put the token in it")
            return token
        return os.environ.get("SEGSERVE_TOKEN") or None

    def engine_config(self) -> EngineConfig:
        from segserve.engine import EngineConfig

        return EngineConfig(
            model=self.model,
            providers=self.providers,
            intra_op_threads=self.intra_op_threads,
            spinning=self.ort_spinning,
            max_batch=self.max_batch,
            mean=self.mean,
            std=self.std,
            input_size=self.input_size.hw if self.input_size else None,
            resize_in_graph=self.resize_in_graph,
            cuda_graph=self.cuda_graph,
            device_decode={"auto": None, "on": True, "off": False}[self.device_decode],
            trt_cache_dir=self.trt_cache_dir,
            channel_order=self.channel_order,
            input_range=self.input_range,
            layout=self.layout,
            output=self.output,
            labels=self.labels,
        )

    def server_config(self):
        """The server's configuration (``ServerConfig``), with the same ``max_batch`` as the engine."""
        from segserve.codec import Limits

        server_config, tls_config = _server_types()
        tls = tls_config(self.tls_cert, self.tls_key, self.tls_client_ca) if self.tls_cert else None
        return server_config(
            host=self.host,
            port=self.port,
            max_message_bytes=self.max_frame_bytes + MIB,
            max_inflight=self.max_inflight,
            max_streams=self.max_streams,
            max_inflight_per_stream=self.max_inflight_per_stream,
            max_batch=self.max_batch,
            max_delay_ms=self.max_delay_ms,
            grace_s=self.grace_s,
            token=self.token(),
            tls=tls,
            metrics_port=self.metrics_port,
            metrics_host=self.metrics_host,
            max_metrics_connections=self.max_metrics_connections,
            metrics_idle_s=self.metrics_idle_s,
            stream_idle_s=self.stream_idle_s,
            max_frame_id_bytes=self.max_frame_id_bytes,
            max_buffered_bytes=self.max_buffered_bytes,
            max_stream_buffered_bytes=self.max_stream_buffered_bytes,
            limits=Limits(
                max_frame_bytes=self.max_frame_bytes,
                max_pixels=self.max_pixels,
                max_jpeg_scans=self.max_jpeg_scans,
            ),
        )


# --- the commands that call a running server --------------------------------------------------------
SERVER_OPTION = Option("--server", "HOST:PORT of a running server", "localhost:50051", metavar="HOST:PORT")
TOKEN_OPTION = Option("--token", "bearer token to send", None, shown="none", metavar="TOKEN")
TLS_CLIENT_OPTIONS: tuple[Option, ...] = (
    Option(
        "--tls-ca", "CA (PEM) of the server's certificate: use TLS", None, o.existing_file, metavar="PATH"
    ),
    Option(
        "--tls-client-cert", "client certificate (PEM), for mutual TLS", None, o.existing_file, metavar="PATH"
    ),
    Option(
        "--tls-client-key", "client private key (PEM), for mutual TLS", None, o.existing_file, metavar="PATH"
    ),
)
HEALTH_TIMEOUT_OPTION = Option(
    "--timeout", "seconds to wait for the answer", 3.0, o.number(0, above=True), env="SEGSERVE_HEALTH_TIMEOUT"
)


@dataclass(frozen=True)
class Connection:
    """How to reach a running server: address, token, TLS."""

    server: str = "localhost:50051"
    token: str | None = None
    tls_ca: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    def __post_init__(self) -> None:
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise UsageError("--tls-client-cert and --tls-client-key go together: give both, or neither")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Connection:
        given: dict[str, Any] = {f.name: getattr(args, f.name, None) for f in fields(cls)}
        return cls(**given)

    @property
    def client_cert(self) -> tuple[Path, Path] | None:
        return (self.tls_client_cert, self.tls_client_key) if self.tls_client_cert else None  # type: ignore[return-value]
