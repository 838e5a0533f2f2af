"""Both images' Dockerfiles are linted, and their install steps run in a clean venv (no Docker engine in
CI): the CPU image's exact RUN line, then `segserve serve` and the HEALTHCHECK command; the GPU image's
RUN line resolved against the package index (its CUDA wheels are a few hundred MB, and need a GPU)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {"Dockerfile": "gpu", "Dockerfile.cpu": "serve"}


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def install_run(name: str) -> str:
    """The RUN instruction that creates the venv and pip-installs segserve, as one shell line."""
    text = re.sub(r"\\\n\s*", " ", dockerfile(name))
    (line,) = [ln for ln in text.splitlines() if ln.startswith("RUN ") and "pip install" in ln]
    return line[len("RUN ") :]


def in_venv(command: str, venv: Path) -> str:
    """The image's command with its venv at ``venv`` and this interpreter as ``python3``."""
    return command.replace("/opt/segserve", str(venv)).replace("python3 -m venv", f"{sys.executable} -m venv")


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_passes(name):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    run = subprocess.run([hadolint, name], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_image_contract(name):
    text = dockerfile(name)
    assert re.search(r"^USER 10001$", text, re.M), "runs as a non-root user"
    assert "EXPOSE 50051 9100" in text
    assert 'CMD ["segserve", "health"' in text
    assert f'pip install --no-cache-dir ".[{IMAGES[name]}]"' in install_run(name)
    assert "SEGSERVE_TRT_CACHE_DIR" not in text and "/trt" not in text, "no TensorRT claims in the images"


def test_cpu_image_is_slim_and_gpu_image_is_cuda():
    cpu, gpu = dockerfile("Dockerfile.cpu"), dockerfile("Dockerfile")
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.\d+-slim", cpu, re.M)
    assert "nvidia/cuda" not in cpu and "apt-get" not in cpu
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:13\.", gpu, re.M)


def test_docker_context_leaves_out_what_the_images_do_not_copy():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".venv", ".git", ".gpuwhl", ".gpustage", "tests", "benchmarks"):
        assert path in ignored
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile("Dockerfile.cpu"), re.M):
        assert not set(copied.split()) & set(ignored)


@pytest.mark.timeout(600)
def test_cpu_image_install_and_start_steps_in_a_clean_venv(tmp_path, toy_model):
    venv = tmp_path / "venv"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the image has only its venv
    command = in_venv(install_run("Dockerfile.cpu"), venv)
    install = subprocess.run(["bash", "-c", command], cwd=ROOT, env=clean, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    segserve = venv / "bin" / "segserve"
    env = {**clean, "SEGSERVE_MODEL": str(toy_model), "SEGSERVE_METRICS_PORT": "0"}
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


@pytest.mark.timeout(600)
def test_gpu_image_install_resolves_to_the_cuda_wheels(tmp_path):
    """The GPU image's RUN line, with pip asked to resolve only (package metadata, no wheels)."""
    venv, report = tmp_path / "venv", tmp_path / "report.json"
    command = in_venv(install_run("Dockerfile"), venv)
    command = command.split(" && ", 2)
    assert len(command) == 3 and "segserve --help" in command[2]
    resolve = command[1].replace("pip install", f"pip install --dry-run --ignore-installed --report {report}")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        ["bash", "-c", f"{command[0]} && {resolve}"], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime-gpu", "nvidia-nvimgcodec-cu13", "nvidia-nvjpeg"} <= names
    assert "onnxruntime" not in names, "the CPU build would shadow onnxruntime-gpu"
