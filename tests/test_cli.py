import subprocess
import sys


def segserve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segserve", *args], capture_output=True, text=True, timeout=timeout
    )


def test_serve_with_a_missing_model_says_so_and_exits_1(tmp_path):
    run = segserve("serve", "--model", str(tmp_path / "nope.onnx"), "--port", "0")
    assert run.returncode == 1
    assert "model file not found" in run.stderr and "Traceback" not in run.stderr


def test_serve_with_an_unavailable_provider_is_explained(toy_model):
    run = segserve("serve", "--model", str(toy_model), "--port", "0", "--providers", "tensorrt")
    assert run.returncode == 1 and "segserve[gpu]" in run.stderr and "Traceback" not in run.stderr


def test_health_and_info_against_a_running_server(target):
    health = segserve("health", "--server", target)
    assert health.returncode == 0 and "SERVING" in health.stdout
    info = segserve("info", "--server", target)
    assert info.returncode == 0 and "toy@1 input 128x96" in info.stdout and "class_5" in info.stdout


def test_health_against_nothing_fails_cleanly():
    run = segserve("health", "--server", "127.0.0.1:1", "--timeout", "2")
    assert run.returncode == 1 and "UNAVAILABLE" in run.stderr and "Traceback" not in run.stderr
