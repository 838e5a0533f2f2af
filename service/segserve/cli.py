"""`segserve serve | segment | info | health | demo | bench | dataset | train | export | eval`.

Every flag of serve and of the client commands defaults to a SEGSERVE_* environment variable, read
only for the command that runs. A mistake ends in one line on stderr: exit code 2 for usage, 1 for
a runtime failure (``--debug`` anywhere on the line shows the traceback too).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segserve import cli_errors, logs, malloc, priority
from segserve import options as o
from segserve.cli_errors import Fatal
from segserve.options import Option, Parser, UsageError
from segserve.settings import (
    HEALTH_TIMEOUT_OPTION,
    SERVE_OPTIONS,
    SERVER_OPTION,
    TLS_CLIENT_OPTIONS,
    TOKEN_OPTION,
    Connection,
    ServeSettings,
)

if TYPE_CHECKING:
    from segserve.client import ModelInfo

log = logging.getLogger("segserve")


# --- serve ----------------------------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC segmentation server",
        description="Run the gRPC segmentation server (health, reflection, optional TLS, token, metrics).",
    )
    o.add_options(p, SERVE_OPTIONS)
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from segserve.edge.server import serve_until_signalled
    from segserve.engine import Engine

    settings = ServeSettings.from_args(args)
    server_config = settings.server_config()
    logs.setup(settings.log_level, settings.log_format)
    malloc.bound_retention()
    _check_free(settings.host, settings.port, "--port")
    if settings.metrics_port:
        _check_free(settings.metrics_host, settings.metrics_port, "--metrics-port")
    engine = priority.call_lowered(lambda: Engine(settings.engine_config()))  # its threads run lowered
    engine.warm_up()
    _event_loop_runner()(
        serve_until_signalled(
            engine,
            server_config,
            lambda server: print(f"segserve listening on {settings.host}:{server.port}", flush=True),
        )
    )
    # Pool threads may still run work whose callers are gone: exit now, so the grace period is true.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, bool]], bool]:
    """``uvloop.run`` where uvloop is installed (the serving extras bring it), else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def _check_free(host: str, port: int, flag: str) -> None:
    """Fail before the model loads when ``host:port`` cannot be bound (in use, or not ours)."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UsageError(
            f"cannot resolve host {host!r} ({exc.strerror}): give an address of this machine"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Fatal(
                    f"port {port} on {host} is in use (another segserve?): stop it, or pick another "
                    f"{flag} (0 picks a free one)"
                ) from None
            raise Fatal(
                f"cannot listen on {host}:{port}: {exc.strerror}; check the host and {flag}"
            ) from None


# --- the commands that call a running server -------------------------------------------------------------
def _add_connection(p: argparse.ArgumentParser, token: bool = True) -> None:
    """--server, --token and the TLS options of the commands that call a running server."""
    o.add_options(p, (SERVER_OPTION, *((TOKEN_OPTION,) if token else ()), *TLS_CLIENT_OPTIONS))


def _client(args: argparse.Namespace, **kwargs):
    from segserve.client import SegmenterClient

    conn = Connection.from_args(args)
    return SegmenterClient(
        conn.server,
        token=conn.token,
        root_certificates=conn.tls_ca,
        client_cert=conn.client_cert,
        **kwargs,
    )


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment one image file on a running server",
        description="Send one image to a running server; write the mask, the (k,k,k) label PNG, the "
        "colour PNG, the overlay and a JSON summary to --out.",
    )
    p.add_argument("image", type=o.argparse_type(o.existing_file), help="JPEG or PNG file to segment")
    o.add_options(
        p,
        (
            Option(
                "--out",
                "folder for mask, overlay and JSON",
                Path("segment-output"),
                o.path,
                env=None,
                metavar="DIR",
            ),
        ),
    )
    _add_connection(p)
    p.set_defaults(func=_segment)


def _segment(args: argparse.Namespace) -> int:
    import json

    import cv2

    from segserve.labels import mask_to_training_rgb

    with _client(args, send="jpeg") as client:
        result = client.segment(args.image.read_bytes(), args.image.stem, overlay="png", coverage=True)
        labels = client.model_info().labels
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
    p = sub.add_parser(
        "info",
        help="print a running server's model info",
        description="Print the model a running server serves: name, version, input size (WxH), "
        "providers, channel order, input range and normalisation, the mask's output, classes.",
    )
    _add_connection(p)
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.model_info()
    width, height = info.input_size
    print(f"{info.name}@{info.version} input {width}x{height} providers {info.providers}")
    if info.channel_order:  # a server too old to say leaves the model's form out
        print(f"  {_form_line(info)}")
    for c in info.labels.classes:
        print(f"  {c.id:3d} {c.name:<16} rgb{c.color}")
    return 0


def _form_line(info: ModelInfo) -> str:
    """The model's form as the server read it: what a caller needs to know about its pixels."""
    batch = f"static batch {info.static_batch}" if info.static_batch else "dynamic batch"
    read = f"{info.input_layout.upper()} {info.input_type}, {batch}, channels {info.channel_order.upper()}"
    if info.input_range:
        mean = ",".join(f"{v:g}" for v in info.mean)
        std = ",".join(f"{v:g}" for v in info.std)
        read += f", input range {info.input_range}, mean {mean}, std {std}"
    else:
        read += ", input range: uint8 pixels, the model normalises them"
    return f"{read}; mask from {info.output_name!r} ({info.output_kind}); labels: {info.label_source}"


def _add_health(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "health",
        help="exit 0 when a server reports SERVING (for Docker HEALTHCHECK, probes)",
        description="Ask a server's gRPC health service; exit 0 on SERVING, 1 otherwise.",
    )
    _add_connection(p, token=False)
    o.add_options(p, (HEALTH_TIMEOUT_OPTION,))
    p.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from segserve.client import open_channel

    conn = Connection.from_args(args)
    with open_channel(conn.server, conn.tls_ca, conn.client_cert) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
        )
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{conn.server}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


# --- the parser and the one error handler -----------------------------------------------------------------
# Sub-commands that live with their own package: (module, function that registers them).
_PLUGINS = ("segserve.demo.cli", "segserve.bench.cli", "segserve.train.cli", "segserve.inspect_model")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="segserve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on failure, print the traceback too (allowed anywhere on the line)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args: argparse.Namespace | None = None
    try:
        args = o.resolve_env(build_parser().parse_args(argv))
        return int(args.func(args) or 0)
    except SystemExit:
        raise
    except BaseException as exc:  # the one place a failure becomes a message and an exit code
        if debug:
            traceback.print_exc()
        failure = cli_errors.explain(exc, args)
        print(f"error: {failure.message}", file=sys.stderr)
        return failure.code


if __name__ == "__main__":
    sys.exit(main())
