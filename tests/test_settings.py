"""The serve settings: flags default to SEGSERVE_* variables read lazily for the command that runs,
validated once, and the one ServeSettings builds both the engine and the server configuration."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from segserve import options as o
from segserve.cli import build_parser
from segserve.cli_errors import explain
from segserve.codec import Limits
from segserve.edge.server import ServerConfig
from segserve.engine import EngineConfig
from segserve.options import Size, UsageError
from segserve.settings import SERVE_OPTIONS, SHIPPED_MODEL, ServeSettings


def parse(*argv: str):
    return o.resolve_env(build_parser().parse_args(list(argv)))


def settings(*argv: str) -> ServeSettings:
    return ServeSettings.from_args(parse("serve", *argv))


@pytest.fixture(autouse=True)
def no_segserve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("SEGSERVE_")]:
        monkeypatch.delenv(name)


def test_defaults_match_the_configs_they_build() -> None:
    s = settings()
    assert s == ServeSettings()  # the flags' defaults are the dataclass's
    assert {opt.dest for opt in SERVE_OPTIONS} == {f.name for f in dataclasses.fields(ServeSettings)}
    server, engine = s.server_config(), s.engine_config()
    derived = {"token", "tls", "limits", "max_message_bytes"}
    for f in dataclasses.fields(ServerConfig):
        if f.name not in derived:
            assert getattr(server, f.name) == getattr(ServerConfig(), f.name), f.name
    assert server.limits == Limits() and server.max_message_bytes == ServerConfig().max_message_bytes
    assert engine == EngineConfig(SHIPPED_MODEL)


def test_every_server_config_field_has_a_flag() -> None:
    flags = {opt.dest for opt in SERVE_OPTIONS}
    covered = flags | {"token", "tls", "limits", "max_message_bytes"}
    assert {f.name for f in dataclasses.fields(ServerConfig)} <= covered
    assert {"max_frame_bytes", "max_pixels", "max_jpeg_scans"} <= flags  # the Limits a user sets


def test_one_max_batch_feeds_engine_and_batcher() -> None:
    s = settings("--max-batch", "3")
    assert s.engine_config().max_batch == s.server_config().max_batch == 3


def test_flags_reach_the_configs() -> None:
    s = settings(
        "--input-size", "480x360", "--mean", "1,2,3", "--std", "4 5 6", "--ort-spinning", "--max-jpeg-scans",
        "12", "--metrics-host", "0.0.0.0", "--stream-idle-s", "5", "--max-frame-bytes", "1000",
    )  # fmt: skip
    engine, server = s.engine_config(), s.server_config()
    assert s.input_size == Size(480, 360) and engine.input_size == (360, 480)  # WxH in, (H, W) inside
    assert engine.mean == (1.0, 2.0, 3.0) and engine.std == (4.0, 5.0, 6.0) and engine.spinning
    assert server.limits == Limits(max_frame_bytes=1000, max_pixels=8192 * 8192, max_jpeg_scans=12)
    assert server.max_message_bytes == 1000 + 1024 * 1024
    assert server.metrics_host == "0.0.0.0" and server.stream_idle_s == 5.0


def test_model_flags_reach_the_engine_config(tmp_path: Path) -> None:
    labels = tmp_path / "names.txt"
    labels.write_text("road\ncar\n")
    s = settings(
        "--channel-order", "BGR", "--input-range", "0..1", "--layout", "nhwc", "--output", "logits",
        "--labels", str(labels),
    )  # fmt: skip
    engine = s.engine_config()
    assert (engine.channel_order, engine.input_range, engine.layout) == ("bgr", "0..1", "nhwc")
    assert engine.output == "logits" and engine.labels == str(labels)
    assert settings("--labels", "Cityscapes").engine_config().labels == "cityscapes"
    assert engine.model_options().channel_order == "bgr"  # what the model reader gets


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("--channel-order", "rbg"), ("--channel-order", "rgb, bgr")),
        (("--input-range", "0..100"), ("--input-range", "0..1, 0..255")),
        (("--layout", "hwc"), ("--layout", "nchw, nhwc")),
        (("--labels", "no-such-map"), ("--labels", "label-map file or one of cityscapes")),
    ],
)
def test_bad_model_flags(argv: tuple[str, ...], words: tuple[str, ...]) -> None:
    with pytest.raises(UsageError) as refused:
        settings(*argv)
    assert all(word in str(refused.value) for word in words), refused.value


def test_model_flag_help_says_default_variable_and_units() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("serve", "inspect"):
        by_flag = {
            a.option_strings[0]: a.help for a in commands.choices[command]._actions if a.option_strings
        }
        for flag in ("--channel-order", "--input-range", "--layout", "--output", "--labels"):
            env = "SEGSERVE_" + flag[2:].replace("-", "_").upper()
            assert "default:" in by_flag[flag] and f"env {env}" in by_flag[flag], (command, flag)
        for flag in ("--mean", "--std"):
            assert "per channel, in the model's channel order and --input-range units" in by_flag[flag]


def test_environment_fills_what_the_flags_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSERVE_PORT", "6000")
    monkeypatch.setenv("SEGSERVE_ORT_SPINNING", "on")
    monkeypatch.setenv("SEGSERVE_INPUT_SIZE", "64x32")
    s = settings()
    assert s.port == 6000 and s.ort_spinning and s.input_size == Size(64, 32)
    s = settings("--port", "7000", "--no-ort-spinning")  # a flag wins over its variable
    assert s.port == 7000 and not s.ort_spinning


def test_a_bad_variable_fails_only_the_command_that_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSERVE_PORT", "abc")
    args = parse("health")  # what the image's HEALTHCHECK runs: SEGSERVE_PORT is not its business
    assert args.server == "localhost:50051" and args.timeout == 3.0
    with pytest.raises(UsageError, match=r"SEGSERVE_PORT='abc'.*--port"):
        parse("serve")
    assert parse("serve", "--port", "1").port == 1  # the flag overrides it: the variable is not read


def test_client_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGSERVE_SERVER", "example:1")
    monkeypatch.setenv("SEGSERVE_TOKEN", "t0k")
    monkeypatch.setenv("SEGSERVE_HEALTH_TIMEOUT", "0.5")
    assert parse("info").server == "example:1" and parse("info").token == "t0k"
    assert parse("health").timeout == 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--tls-key", __file__), "--tls-cert and --tls-key go together"),
        (("--tls-client-ca", __file__), "--tls-client-ca needs --tls-cert"),
        (("--std", "1,0,1"), "--std must be above 0"),
        (("--max-inflight", "2", "--max-inflight-per-stream", "3"), "--max-inflight-per-stream"),
        (("--max-buffered-bytes", "10", "--max-stream-buffered-bytes", "11"), "--max-stream-buffered-bytes"),
    ],
)
def test_settings_that_cannot_go_together(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings(*argv)


def test_token_from_file_or_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert settings("--token-file", str(token_file)).server_config().token == "s3cret"
    monkeypatch.setenv("SEGSERVE_TOKEN", "from-env")
    assert settings().server_config().token == "from-env"
    token_file.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        settings("--token-file", str(token_file)).server_config()


@pytest.mark.parametrize(
    ("text", "value"),
    [("480x360", Size(480, 360)), (" 1920X1080 ", Size(1920, 1080))],
)
def test_sizes_are_width_by_height(text: str, value: Size) -> None:
    assert o.size(text) == value and str(value) == text.strip().lower()


@pytest.mark.parametrize("text", ["480x360x3", "480", "0x360", "ax360", "-1x2"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="WxH"):
        o.size(text)


def test_switches_are_on_off_pairs() -> None:
    assert settings("--resize-in-graph").resize_in_graph is True
    assert settings("--resize-in-graph", "--no-resize-in-graph").resize_in_graph is False
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    help_text = commands.choices["serve"].format_help()
    assert "--cuda-graph, --no-cuda-graph" in help_text and "[CUDA_GRAPH]" not in help_text


def test_a_missing_extra_names_the_extra() -> None:
    failure = explain(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert (
        failure.code == 1
        and "'train' extra" in failure.message
        and "pip install -e '.[train]'" in failure.message
    )


def test_a_missing_extra_is_named_for_the_command() -> None:
    failure = explain(
        ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"),
        argparse.Namespace(command="eval"),
    )
    assert "'train' extra" in failure.message
    failure = explain(ModuleNotFoundError("x", name="matplotlib"), argparse.Namespace(command="bench"))
    assert "'bench' extra" in failure.message
    assert "unexpected" in explain(ModuleNotFoundError("x", name="nothing_of_ours")).message
