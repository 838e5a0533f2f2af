"""Settings from CLI flags, each defaulting to a SEGSERVE_* environment variable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_MODEL_NAME = "segserve-camvid.onnx"
_REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def default_model_path() -> Path:
    """$SEGSERVE_MODEL, else the shipped model in the repository's models/, else /models (Docker)."""
    env = os.environ.get("SEGSERVE_MODEL")
    if env:
        return Path(env)
    for folder in (_REPO_MODELS, Path("/models")):
        if (folder / DEFAULT_MODEL_NAME).is_file():
            return folder / DEFAULT_MODEL_NAME
    return _REPO_MODELS / DEFAULT_MODEL_NAME


def env_default(flag: str, default=None, cast=str):
    """The value of SEGSERVE_<FLAG> (dashes to underscores, upper case) or ``default``."""
    value = os.environ.get("SEGSERVE_" + flag.lstrip("-").replace("-", "_").upper())
    return default if value is None else cast(value)


def add_env_option(parser: argparse.ArgumentParser, flag: str, default=None, type=str, **kwargs) -> None:
    env_name = "SEGSERVE_" + flag.lstrip("-").replace("-", "_").upper()
    help_text = kwargs.pop("help", "")
    parser.add_argument(
        flag,
        default=env_default(flag, default, type),
        type=type,
        help=f"{help_text} [env {env_name}; default {default}]",
        **kwargs,
    )


def parse_triple(text: str | None) -> tuple[float, float, float] | None:
    if not text:
        return None
    values = tuple(float(v) for v in text.replace(",", " ").split())
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 numbers (R G B), got {text!r}")
    return values  # type: ignore[return-value]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'HxW' -> (H, W)."""
    if not text:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 360x480, got {text!r}") from None
    return height, width
