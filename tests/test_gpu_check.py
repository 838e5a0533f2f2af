"""`make gpu-check --dry-run` end to end in a subprocess, on the CPU: staged parts assembled and
installed, the GPU tests collected (and skipped), the engine bench run, the results JSON written to the
results folder and to $OUT. So the script is known to work before a GPU machine is there."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu" / "check.py"


def make_wheel(folder: Path, name: str, version: str = "0.1") -> Path:
    """A minimal pure-Python wheel (what pip needs: module, METADATA, WHEEL, RECORD)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"NAME = {name!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def stage_in_parts(stage: Path, wheel: Path, parts: int = 3) -> None:
    """What ../shared/gpu/stage-ort-gpu.sh and the copy calls leave on the device: part.NN, NAME, SHA256."""
    data = wheel.read_bytes()
    size = -(-len(data) // parts)
    for i in range(parts):
        (stage / f"part.{i:02d}").write_bytes(data[i * size : (i + 1) * size])
    (stage / "NAME").write_text(wheel.name + "\n")
    (stage / "SHA256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def dry_run(stage: Path, results: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHONPATH": str(ROOT / "service")}
    cmd = [sys.executable, str(CHECK), "--dry-run", "--stage", str(stage), "--extra", str(stage / "extra")]
    cmd += ["--results-dir", str(results)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)


@pytest.fixture
def staged(tmp_path) -> Path:
    stage, build = tmp_path / "stage", tmp_path / "build"
    (stage / "extra").mkdir(parents=True)
    build.mkdir()
    stage_in_parts(stage, make_wheel(build, "segserve_probe_runtime"))
    make_wheel(stage / "extra", "segserve_probe_extra")
    return stage


@pytest.mark.timeout(300)
def test_dry_run_end_to_end(tmp_path, staged):
    results, out = tmp_path / "results", tmp_path / "out"
    run = dry_run(staged, results, out)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    for progress in (
        "DRY RUN",
        "stage: installing 2 wheels",
        "pytest: ok",
        "engine_bench: ok",
        "done: all steps ok",
    ):
        assert progress in run.stdout
    (written,) = results.glob("gpu-check-dry-run-*.json")
    report = json.loads(written.read_text())
    assert json.loads((out / "gpu-check.json").read_text()) == report

    assert report["dry_run"] and report["device"]["name"].startswith("dry-run")
    assert "no GPU figure" in report["note"]
    assert set(report["stage"]["wheels"]) == {
        "segserve_probe_runtime-0.1-py3-none-any.whl",
        "segserve_probe_extra-0.1-py3-none-any.whl",
    }
    site = staged / "site"
    assert (site / "segserve_probe_runtime.py").is_file() and (site / "segserve_probe_extra.py").is_file()
    assert (staged / "segserve_probe_runtime-0.1-py3-none-any.whl").is_file()  # reassembled from parts

    tests = report["pytest"]
    assert tests["failed"] == 0 and tests["passed"] == 0 and tests["skipped"] >= 10
    assert all("CUDA" in reason for reason in tests["skip_reasons"])
    figures = report["engine_bench"]["cpu"]
    assert figures["providers_used"][0] == "CPUExecutionProvider" and figures["cpu_decode_b2"]["p50"] > 0
    assert figures["decode_device"] == "cpu"
    command = report["segserve_bench"]["cuda"]["command"]
    assert command[:3] == ["segserve", "bench", "--gpu"] and "--frames" in command
    assert {s["status"] for s in report["steps"].values()} <= {"ok", "skipped"}

    again = dry_run(staged, results, out)  # a warm machine: the installed site is reused
    assert again.returncode == 0 and "stage: installing" not in again.stdout


@pytest.mark.timeout(300)
def test_a_damaged_part_stops_the_run_with_a_clear_reason(tmp_path, staged):
    part = staged / "part.01"
    data = bytearray(part.read_bytes())
    data[0] ^= 0xFF
    part.write_bytes(bytes(data))
    run = dry_run(staged, tmp_path / "results", tmp_path / "out")
    assert run.returncode == 1
    assert "one is missing or damaged; stage again" in run.stdout
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert report["steps"]["stage"]["status"] == "failed"
    assert {report["steps"][s]["status"] for s in ("pytest", "engine_bench", "segserve_bench")} == {"skipped"}
