"""The CLI as a user runs it: help on every option, the client commands against a real server, the
shipped model used from outside the repository, serve's SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from segserve.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
CLIENT_COMMANDS = ("serve", "segment", "info", "health")
OWN_HELP_STYLE = ("demo",)  # segserve/demo/cli.py writes its own help (its package's owner)


def segserve(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segserve", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every leaf subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _commands(child, (*path, name))


def test_every_option_says_what_it_does_and_its_default() -> None:
    checked = 0
    for path, parser in _commands(build_parser()):
        if path[0] in OWN_HELP_STYLE:
            continue
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            where = f"segserve {' '.join(path)} {action.option_strings[0]}"
            assert action.help, where
            assert "default:" in action.help or "(required)" in action.help, where
            if path[0] in CLIENT_COMMANDS and action.dest != "out":
                assert "env SEGSERVE_" in action.help, where
            checked += 1
    assert checked > 80


def test_help_of_each_command_renders() -> None:
    for path, _ in _commands(build_parser()):
        run = segserve(*path, "--help")
        assert run.returncode == 0 and "usage: segserve" in run.stdout, path


def test_health_and_info_against_a_running_server(target: str) -> None:
    health = segserve("health", "--server", target)
    assert health.returncode == 0 and "SERVING" in health.stdout
    info = segserve("info", "--server", target)
    assert info.returncode == 0 and "toy@1 input 128x96" in info.stdout and "class_5" in info.stdout  # WxH


def test_serve_with_an_unavailable_provider_is_explained(toy_model: Path) -> None:
    run = segserve("serve", "--model", str(toy_model), "--port", "0", "--providers", "tensorrt")
    assert run.returncode == 1 and "segserve[gpu]" in run.stderr and "Traceback" not in run.stderr


def test_eval_outside_the_repository_uses_the_shipped_model(tmp_path: Path) -> None:
    val = ROOT / "tests" / "fixtures" / "camvid" / "val"
    run = segserve("eval", "--data", str(val), "--out", "ev", "--pictures", "0", cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "mIoU" in run.stdout and (tmp_path / "ev" / "report.json").is_file()


def test_serve_from_the_environment_then_sigterm(toy_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SEGSERVE_MODEL": str(toy_model), "SEGSERVE_HOST": "127.0.0.1", "SEGSERVE_PORT": "0"}
    env["SEGSERVE_GRACE_S"] = "2"
    server = subprocess.Popen(
        [sys.executable, "-m", "segserve", "serve", "--intra-op-threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = server.stdout.readline()  # printed once the server listens
        assert line.startswith("segserve listening on 127.0.0.1:"), line + server.stderr.read()
        target = line.split()[-1]
        assert segserve("health", "--server", target).returncode == 0
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()
        server.stderr.close()


@pytest.mark.parametrize("argv", [("--help",), ("serve", "--help")])
def test_help_does_not_read_the_environment(argv: tuple[str, ...]) -> None:
    run = segserve(*argv, env={**os.environ, "SEGSERVE_PORT": "abc", "SEGSERVE_MAX_BATCH": "many"})
    assert run.returncode == 0 and "usage: segserve" in run.stdout and not run.stderr


def test_serve_runs_on_uvloop_when_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    from segserve.cli import _event_loop_runner

    runner = _event_loop_runner()
    assert runner is uvloop.run

    async def which_loop() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert runner(which_loop()).startswith("uvloop")
