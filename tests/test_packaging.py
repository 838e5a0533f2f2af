"""`make dist`'s artefacts: the wheel holds the shipped model, declares no torch or matplotlib for
serving, and installed into a clean venv serves the shipped model from an empty folder.

The clean venv has no system site-packages and gets no network: the wheel goes in with --no-deps,
and the dependencies come from the test's own environment through a .pth line (that folder's own
.pth files, such as an editable install of this repository, are not processed there)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("segserve/models/segserve-camvid.onnx", "segserve/models/segserve-camvid.labels.json")
FRAME = next((ROOT / "tests" / "fixtures" / "camvid" / "val" / "images").glob("*.jpg"))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("SEGSERVE_")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist + wheel built from a copy of the sources (no build/ or egg-info left in the tree)."""
    pytest.importorskip("build", reason="the dev extra's `build` is needed to build the wheel")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "service", src / "service", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path_factory.mktemp("dist")
    run = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return out


def test_sdist_and_wheel_hold_the_shipped_model(dist: Path) -> None:
    (wheel,) = dist.glob("segserve-*.whl")
    (sdist,) = dist.glob("segserve-*.tar.gz")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(MODEL_FILES) <= names and "segserve/py.typed" in names
    assert not any("benchmarks/" in n or "/tests/" in n for n in names)
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    assert {f"service/{f}" for f in MODEL_FILES} <= members


def test_serving_requirements_have_no_torch_or_matplotlib(dist: Path) -> None:
    (wheel,) = dist.glob("segserve-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in whl.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    serving = [r for r in requires if "extra ==" not in r or 'extra == "serve"' in r]
    assert any(r.startswith("onnxruntime") for r in serving) and any(r.startswith("grpcio") for r in serving)
    assert not [r for r in serving if r.startswith(("torch", "matplotlib", "grpcio-status"))], serving
    assert not [r for r in requires if r.startswith("grpcio-status")]


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean venv with the wheel installed; yields its bin/ folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("segserve-*.whl")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    assert run.returncode == 0, run.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield venv / "bin"


def test_the_installed_wheel_serves_the_shipped_model_from_an_empty_folder(
    installed: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _clean_env()
    where = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import segserve.settings as s; print(s.__file__, s.SHIPPED_MODEL.is_file())",
        ],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
        timeout=60,
    ).stdout.split()
    assert where[0].startswith(str(installed.parent)) and where[1] == "True"  # the wheel's, not the repo's
    server = subprocess.Popen(
        [
            str(installed / "segserve"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--intra-op-threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=empty,
        env=env,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("segserve listening on 127.0.0.1:"), line + server.stderr.read()
        target = line.split()[-1]

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(installed / "segserve"), *args, "--server", target],
                capture_output=True,
                text=True,
                cwd=empty,
                env=env,
                timeout=60,
            )

        health, info = cli("health"), cli("info")
        assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
        assert (
            info.returncode == 0 and info.stdout.startswith("segserve-camvid@") and "480x360" in info.stdout
        )
        segment = cli("segment", str(FRAME), "--out", "out")
        assert segment.returncode == 0, segment.stderr
        assert (empty / "out" / f"{FRAME.stem}_mask.png").is_file()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()
        server.stderr.close()
