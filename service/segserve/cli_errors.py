"""What the CLI tells the user when a command fails: one line naming the problem and the fix.

``explain`` maps the project's error types (and the few library errors a command can end in) to a
message and an exit code: 2 for usage (a bad flag, argument or SEGSERVE_* value), 1 for runtime
failures, 130 for Ctrl-C. ``segserve --debug ...`` prints the traceback as well.
"""

from __future__ import annotations

import argparse
import errno
import sys
from dataclasses import dataclass

from segserve.errors import SegserveError
from segserve.options import UsageError

USAGE, RUNTIME, INTERRUPTED = 2, 1, 130

# Modules that only an extra installs -> that extra.
_EXTRAS = {
    "torch": "train",
    "onnxscript": "train",
    "tqdm": "train",
    "matplotlib": "bench",
    "pygame": "demo",
    "av": "demo",
    "onnxruntime": "serve",
}
# Commands -> the extra that holds what they need (matplotlib is in several).
_COMMAND_EXTRAS = {"train": "train", "export": "train", "eval": "train", "dataset": "train", "demo": "demo"}
_COMMAND_EXTRAS |= {"bench": "bench", "serve": "serve"}


class Fatal(Exception):
    """A runtime failure whose message already says what to do (exit code 1)."""


@dataclass(frozen=True)
class Failure:
    message: str
    code: int


def explain(exc: BaseException, args: argparse.Namespace | None = None) -> Failure:
    """The one line (without the ``error:`` prefix) and the exit code for ``exc``."""
    if isinstance(exc, UsageError):
        return Failure(str(exc), USAGE)
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", INTERRUPTED)
    if isinstance(exc, (Fatal, SegserveError)):
        return Failure(str(exc), RUNTIME)
    rpc = _rpc_failure(exc, args)
    if rpc is not None:
        return rpc
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        extra = _EXTRAS.get(exc.name.split(".")[0])
        if extra:
            extra = _COMMAND_EXTRAS.get(getattr(args, "command", None) or "", extra)
            return Failure(
                f"{exc.name} is not installed; install segserve with the '{extra}' extra "
                f"(in a clone: pip install -e '.[{extra}]')",
                RUNTIME,
            )
    if _is_bind_failure(exc):
        where = f"{args.host}:{args.port}" if args is not None and hasattr(args, "port") else "the address"
        return Failure(
            f"cannot listen on {where}: the port is in use or the address is not this machine's; "
            "stop the other server or pick another --port (0 picks a free one)",
            RUNTIME,
        )
    if isinstance(exc, FileNotFoundError):
        if exc.filename is not None:
            return Failure(f"no such file or folder: {exc.filename}; check the path", RUNTIME)
        return Failure(str(exc), RUNTIME)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename is not None else ""
        return Failure(f"{exc.strerror}{where}", RUNTIME)
    lines = str(exc).splitlines()
    what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return Failure(f"unexpected {what} (rerun with --debug for the traceback)", RUNTIME)


def _rpc_failure(exc: BaseException, args: argparse.Namespace | None) -> Failure | None:
    grpc = sys.modules.get("grpc")
    if grpc is None:
        return None
    server = getattr(args, "server", None) or "the server"
    if isinstance(exc, grpc.FutureTimeoutError):
        return Failure(f"{server} did not answer in time; is a server running there?", RUNTIME)
    if not isinstance(exc, grpc.RpcError) or not hasattr(exc, "code"):
        return None
    code = exc.code()
    lines = (exc.details() or "").splitlines()
    details = lines[0] if lines else "no details"
    if code == grpc.StatusCode.UNAVAILABLE:
        details = details.rsplit(": ", 1)[-1]  # "failed to connect ...; last error: ...: Connection refused"
    hint = {
        grpc.StatusCode.UNAVAILABLE: f"cannot reach {server} ({details}); is a server running there? "
        "Start one with `segserve serve`, or give --server HOST:PORT (and --tls-ca for a TLS server)",
        grpc.StatusCode.UNAUTHENTICATED: f"{details}; give --token or set SEGSERVE_TOKEN",
        grpc.StatusCode.PERMISSION_DENIED: f"{details}; check --token or SEGSERVE_TOKEN",
        grpc.StatusCode.DEADLINE_EXCEEDED: f"{details}; server slow or overloaded: retry or wait longer",
    }.get(code, details)
    return Failure(f"{code.name}: {hint}", RUNTIME)


def _is_bind_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, OSError)) and ("failed to bind" in text or "could not bind" in text)
