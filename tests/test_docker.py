"""The Dockerfile is linted, and its install and start steps run in a clean venv (no Docker engine
in CI): the same `pip install ".[extra]"`, then `segserve serve` and the HEALTHCHECK command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    run = subprocess.run([hadolint, "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_image_contract():
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M), "runs as a non-root user"
    assert "EXPOSE 50051 9100" in DOCKERFILE
    assert 'CMD ["segserve", "health"' in DOCKERFILE
    assert re.search(r'pip install --no-cache-dir "\.\[\$\{ORT_EXTRA\}\]"', DOCKERFILE)
    assert "ARG ORT_EXTRA=gpu" in DOCKERFILE


@pytest.mark.timeout(600)
def test_install_and_start_steps_in_a_clean_venv(tmp_path, toy_model):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    install = subprocess.run([str(pip), "install", "-q", f"{ROOT}[cpu]"], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    segserve = venv / "bin" / "segserve"
    env = {**os.environ, "SEGSERVE_MODEL": str(toy_model), "SEGSERVE_METRICS_PORT": "0"}
    env.pop("PYTHONPATH", None)
    server = subprocess.Popen(
        [str(segserve), "serve", "--host", "127.0.0.1", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        line = ""
        deadline = time.time() + 60
        while "listening on" not in line and time.time() < deadline:
            line = server.stdout.readline()
            assert line or server.poll() is None, "server exited before listening"
        port = line.strip().rsplit(":", 1)[1]
        health = subprocess.run(
            [str(segserve), "health", "--server", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0 and "SERVING" in health.stdout
    finally:
        server.terminate()
        assert server.wait(30) == 0
