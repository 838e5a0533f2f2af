"""Run deploy/nginx/segserve.conf in front of replicas on this machine, as a child process.

    python3 deploy/nginx/nginx_local.py --listen 127.0.0.1:8080 127.0.0.1:50051 127.0.0.1:50052

The tests and benchmarks/scale_test.py use ``render`` and ``Nginx``: the shipped segserve.conf,
unchanged but for its listen address, with a replica list and a main nginx.conf of their own in a
folder (nginx's own prefix there: pid, temp files and logs never touch /etc or /var), nginx in the
foreground (``daemon off``) so it dies with its parent's cleanup.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "segserve.conf"
SHIPPED_LISTEN = "    listen 50051 http2;\n"
READY_LINE = "start worker process"  # nginx logs it (notice) once its listeners are bound

MAIN_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include segserve.conf;
}}
"""


def nginx_binary() -> str | None:
    """Debian installs nginx in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def render(folder: Path, listen: str, replicas: Sequence[str]) -> Path:
    """Write nginx.conf, segserve.conf (the shipped one, listening on ``listen``) and
    segserve-replicas.conf into ``folder``; returns the main config's path."""
    if not replicas:
        raise ValueError("no replica given")
    shipped = SHIPPED.read_text()
    if shipped.count(SHIPPED_LISTEN) != 1:
        raise ValueError(f"{SHIPPED} must hold exactly one line {SHIPPED_LISTEN.strip()!r}")
    folder = Path(folder).resolve()
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "segserve.conf").write_text(shipped.replace(SHIPPED_LISTEN, f"    listen {listen} http2;\n"))
    (folder / "segserve-replicas.conf").write_text(
        "".join(f"server {r} max_fails=1 fail_timeout=2s;\n" for r in replicas)
    )
    main = folder / "nginx.conf"
    main.write_text(MAIN_CONF.format(prefix=folder))
    return main


def check(conf: Path, binary: str | None = None) -> subprocess.CompletedProcess:
    """``nginx -t`` on ``conf`` (its prefix is the config's folder)."""
    binary = binary or nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
    return subprocess.run(
        [binary, "-t", "-p", str(conf.parent), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )


class Nginx:
    """nginx in the foreground on a rendered config; ``stop()`` (or the context exit) ends it."""

    def __init__(self, conf: Path, binary: str | None = None, log: Path | None = None):
        binary = binary or nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx)")
        self.log_lines: list[str] = []
        self._log_path = Path(log) if log else None
        self.proc = subprocess.Popen(
            [binary, "-p", str(conf.parent), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self._reader.start()
        ready.wait()  # set by the ready line, or by nginx's exit (the reader hits EOF)
        if self.proc.poll() is not None or not any(READY_LINE in line for line in self.log_lines):
            self.stop()
            raise RuntimeError("nginx did not start: " + "".join(self.log_lines[-5:]).strip())

    def _read(self, ready: threading.Event) -> None:
        assert self.proc.stderr is not None
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(self._log_path.open("a")) if self._log_path else None
            for line in self.proc.stderr:
                self.log_lines.append(line)
                if out is not None:
                    out.write(line)
                    out.flush()
                if READY_LINE in line:
                    ready.set()
        ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: open calls finish, then workers exit
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("replicas", nargs="+", help="host:port of each segserve replica")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="address nginx listens on (h2c)")
    parser.add_argument("--folder", type=Path, default=Path("nginx-local"), help="config, pid and temp files")
    args = parser.parse_args(argv)
    conf = render(args.folder, args.listen, args.replicas)
    result = check(conf)
    if result.returncode != 0:
        print(f"error: nginx -t: {result.stderr.strip()}", file=sys.stderr)
        return 1
    with Nginx(conf) as nginx:
        print(f"nginx on {args.listen} -> {', '.join(args.replicas)} (Ctrl-C stops it)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            nginx.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
