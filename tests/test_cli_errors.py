"""Every CLI mistake ends in one line on stderr that names the problem and the fix: exit code 2 for
usage, 1 for runtime failures, never a traceback (unless --debug asks for one). Run as a user would:
a subprocess, from a folder outside the repository."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_IMAGE = next((ROOT / "tests" / "fixtures" / "camvid" / "val" / "images").glob("*.jpg"))


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path, int], list[str]]  # (scratch folder, a port that refuses) -> argv
    code: int
    words: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # words the line must not hold


def _no_labels(tmp: Path) -> str:
    split = tmp / "split"
    (split / "images").mkdir(parents=True, exist_ok=True)
    (split / "images" / "a.jpg").write_bytes(FIXTURE_IMAGE.read_bytes())
    return str(split)


def _no_classes(tmp: Path) -> str:
    split = Path(_no_labels(tmp))
    (split / "labels").mkdir(exist_ok=True)
    return str(split)


def _empty(tmp: Path) -> str:
    (tmp / "empty").mkdir(exist_ok=True)
    return str(tmp / "empty")


CASES = [
    Case("no command", lambda t, p: [], 2, ("COMMAND", "--help")),
    Case("unknown flag", lambda t, p: ["health", "--colour", "red"], 2, ("--colour", "health --help")),
    Case(
        "size with three numbers",
        lambda t, p: ["serve", "--input-size", "480x360x3"],
        2,
        ("--input-size", "WxH"),
    ),
    Case("mean with two numbers", lambda t, p: ["serve", "--mean", "1,2"], 2, ("--mean", "one per channel")),
    Case(
        "channel order neither rgb nor bgr",
        lambda t, p: ["serve", "--channel-order", "grb"],
        2,
        ("--channel-order", "rgb, bgr", "'grb'"),
    ),
    Case(
        "bad SEGSERVE_INPUT_RANGE",
        lambda t, p: ["serve"],
        2,
        ("SEGSERVE_INPUT_RANGE", "0..1, 0..255", "unset"),
        {"SEGSERVE_INPUT_RANGE": "0-100"},
    ),
    Case(
        "inspect with an unknown label map",
        lambda t, p: ["inspect", str(t / "m.onnx"), "--labels", "kitti"],
        2,
        ("--labels", "cityscapes", "'kitti'", "inspect --help"),
    ),
    Case("port out of range", lambda t, p: ["serve", "--port", "70000"], 2, ("--port", "0..65535")),
    Case(
        "bad SEGSERVE_PORT",
        lambda t, p: ["serve"],
        2,
        ("SEGSERVE_PORT", "'abc'", "unset"),
        {"SEGSERVE_PORT": "abc"},
    ),
    Case(
        "bad SEGSERVE_PORT in another command",  # read only by serve: health just cannot reach the server
        lambda t, p: ["health", "--server", f"127.0.0.1:{p}"],
        1,
        ("UNAVAILABLE", "segserve serve"),
        {"SEGSERVE_PORT": "abc"},
        absent=("SEGSERVE_PORT",),
    ),
    Case(
        "bad SEGSERVE_HEALTH_TIMEOUT",
        lambda t, p: ["health"],
        2,
        ("SEGSERVE_HEALTH_TIMEOUT", "number"),
        {"SEGSERVE_HEALTH_TIMEOUT": "soon"},
    ),
    Case(
        "bad switch value",
        lambda t, p: ["serve"],
        2,
        ("SEGSERVE_ORT_SPINNING", "true/false"),
        {"SEGSERVE_ORT_SPINNING": "maybe"},
    ),
    Case(
        "half a TLS pair",
        lambda t, p: ["serve", "--tls-cert", str(FIXTURE_IMAGE)],
        2,
        ("--tls-cert and --tls-key go together",),
    ),
    Case(
        "per-stream bound over the total",
        lambda t, p: ["serve", "--max-inflight", "4", "--max-inflight-per-stream", "8"],
        2,
        ("--max-inflight-per-stream", "--max-inflight"),
    ),
    Case(
        "missing model",
        lambda t, p: ["serve", "--model", str(t / "nope.onnx")],
        2,
        ("--model", "no such file"),
    ),
    Case(
        "missing SEGSERVE_MODEL",
        lambda t, p: ["serve"],
        2,
        ("SEGSERVE_MODEL", "no such file"),
        {"SEGSERVE_MODEL": "/nonexistent/model.onnx"},
    ),
    Case(
        "export without its checkpoint",
        lambda t, p: ["export", "--checkpoint", str(t / "best.pt")],
        2,
        ("--checkpoint", "no such file", "best.pt"),
    ),
    Case(
        "eval outside the repo, no --model, a folder without labels",
        lambda t, p: ["eval", "--data", _no_labels(t)],
        2,
        ("--data", "labels/", "dataset"),
    ),
    Case(
        "train on a folder without classes.json",
        lambda t, p: ["train", "--data", _no_classes(t)],
        2,
        ("--data", "classes.json"),
    ),
    Case(
        "train crop as HxWxC",
        lambda t, p: ["train", "--crop", "1x2x3", "--data", _no_classes(t)],
        2,
        ("--crop",),
    ),
    Case(
        "train with a weight-average decay of 1 (the weights would never move)",
        lambda t, p: ["train", "--ema", "1", "--data", _no_classes(t)],
        2,
        ("--ema", "0.999"),
    ),
    Case(
        "train with an unknown input normalisation",
        lambda t, p: ["train", "--model-config", '{"input_norm": "frame"}', "--data", _no_classes(t)],
        2,
        ("input_norm", "image"),
    ),
    Case(
        "segment a missing image",
        lambda t, p: ["segment", str(t / "frame.jpg")],
        2,
        ("image", "no such file"),
    ),
    Case(
        "segment, no server there",
        lambda t, p: ["segment", str(FIXTURE_IMAGE), "--server", f"127.0.0.1:{p}"],
        1,
        ("UNAVAILABLE", "--server HOST:PORT"),
    ),
    Case("info, no server there", lambda t, p: ["info", "--server", f"127.0.0.1:{p}"], 1, ("UNAVAILABLE",)),
    Case(
        "health, no server there",
        lambda t, p: ["health", "--server", f"127.0.0.1:{p}", "--timeout", "5"],
        1,
        ("UNAVAILABLE", "segserve serve"),
    ),
    Case(
        "demo with a missing video",
        lambda t, p: ["demo", "--source", str(t / "clip.mp4"), "--headless", "--out", str(t / "o")],
        2,
        ("clip.mp4",),
    ),
    Case(
        "demo on an empty image folder",
        lambda t, p: ["demo", "--source", _empty(t), "--headless", "--out", str(t / "o")],
        2,
        ("no images",),
    ),
    Case("bench without --images", lambda t, p: ["bench"], 2, ("--images",)),
    Case(
        "bench with a missing naive reference",
        lambda t, p: ["bench", "--images", _empty(t), "--naive", str(t / "naive.py")],
        2,
        ("--naive", "no such file"),
    ),
    Case(
        "dataset convert size as HxWxC",
        lambda t, p: [
            "dataset",
            "convert",
            "--images",
            _empty(t),
            "--labels",
            _empty(t),
            "--classes",
            str(FIXTURE_IMAGE),
            "--out",
            str(t / "o"),
            "--size",
            "360x480x3",
        ],
        2,
        ("--size", "WxH"),
    ),
]


@pytest.fixture(scope="module")
def refusing_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, not listening: connections are refused)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def segserve(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", "segserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, **(env or {})},
    )


def assert_one_line(run: subprocess.CompletedProcess, code: int, words: tuple[str, ...]) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert run.returncode == code, (run.returncode, run.stderr)
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_invocation_is_one_line(case: Case, tmp_path: Path, refusing_port: int) -> None:
    work = tmp_path / "work"
    work.mkdir()
    run = segserve(case.args(tmp_path, refusing_port), cwd=work, env=case.env)
    line = assert_one_line(run, case.code, case.words)
    assert not any(word in line for word in case.absent), line


def test_serve_on_a_port_in_use_says_so_before_loading_the_model(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        run = segserve(["serve", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path)
    line = assert_one_line(run, 1, (f"port {port}", "in use", "--port"))
    assert "0 picks a free one" in line


def test_debug_shows_the_traceback_as_well(tmp_path: Path) -> None:
    run = segserve(["serve", "--input-size", "480x360x3", "--debug"], cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: segserve serve: argument --input-size")
