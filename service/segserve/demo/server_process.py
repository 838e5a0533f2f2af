"""Start ``segserve serve`` as a subprocess on a free loopback port, wait for SERVING, stop with SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segserve.demo.errors import DemoError


class ServerProcess:
    """``with ServerProcess(model) as server: server.target`` -> "127.0.0.1:PORT"."""

    def __init__(
        self,
        model: Path,
        extra_args: tuple[str, ...] = (),
        log_path: Path | None = None,
        start_timeout: float = 180.0,
    ):
        self.model = Path(model)
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.target = ""

    def start(self) -> str:
        if not self.model.is_file():
            raise DemoError(f"model not found: {self.model} (train and export it, or set SEGSERVE_MODEL)")
        cmd = [
            sys.executable,
            "-m",
            "segserve",
            "serve",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *self.extra_args,
        ]
        log_file: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_file = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Its own session: a Ctrl-C in the terminal reaches only us, and we stop the server in order.
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log_file if log_file is not None else subprocess.DEVNULL,
            env=env,
            text=True,
            start_new_session=True,
        )
        if log_file is not None:
            log_file.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise DemoError(
                    f"the server did not start within {self.start_timeout:.0f} s{self._log_hint()}"
                ) from None
            if line is None:
                code = self.process.wait()
                raise DemoError(f"the server exited with code {code} at start{self._last_log_line()}")
            if line.startswith("segserve listening on"):
                port = int(line.rsplit(":", 1)[1])
                self.target = f"127.0.0.1:{port}"
                break
        self.wait_serving(deadline)
        return self.target

    def wait_serving(self, deadline: float) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.process is not None and self.process.poll() is not None:
                    raise DemoError(
                        f"the server exited with code {self.process.returncode}{self._last_log_line()}"
                    )
                time.sleep(0.1)
        self.stop()
        raise DemoError(f"the server at {self.target} did not report SERVING in time{self._log_hint()}")

    def _log_hint(self) -> str:
        return f" (see {self.log_path})" if self.log_path else ""

    def _last_log_line(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        tail = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return f": {tail[-1].strip()}" if tail else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the server drains and stops), SIGKILL if it has not stopped within ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
