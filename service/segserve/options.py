"""Command-line options that default to ``SEGSERVE_*`` environment variables, converted lazily.

An option is declared once (flag, default, converter, help); its argparse default is a placeholder
that ``resolve_env`` swaps for the environment's value only for the subcommand that runs, so a bad
``SEGSERVE_PORT`` cannot break ``segserve health``. Every converter raises ``ValueError`` with a
message that says what was expected; a bad flag or variable becomes a one-line ``UsageError``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn


class UsageError(Exception):
    """A bad flag, argument or ``SEGSERVE_*`` value: one line for the user, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes raise UsageError (one line) instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")

    def parse_known_args(self, args=None, namespace=None):
        """Unknown arguments are reported by the (sub)command that got them, not by ``segserve``."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


# --- converters: str -> value, ValueError with what was expected ----------------------------------
@dataclass(frozen=True)
class Size:
    """A frame or model size. Written WxH everywhere (width first, like 1920x1080)."""

    width: int
    height: int

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def size(text: str) -> Size:
    """'WxH' -> Size, e.g. '480x360'."""
    parts = text.strip().lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected WxH (width x height), e.g. 480x360, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"expected a positive WxH, e.g. 480x360, got {text!r}")
    return Size(width, height)


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"{low}..{high}"
            raise ValueError(f"expected a whole number {bounds}, got {value}")
        return value

    convert.__name__ = "integer"
    return convert


def number(low: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A finite float >= ``low`` (> ``low`` with ``above``)."""

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)):
            raise ValueError(f"expected a number {'above' if above else 'at least'} {low}, got {text!r}")
        return value

    convert.__name__ = "number"
    return convert


def port(text: str) -> int:
    return integer(0, 65535)(text)


def triple(text: str) -> tuple[float, float, float]:
    """'A,B,C' or 'A B C' -> three floats (one per channel)."""
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"expected three numbers, one per channel, e.g. 123.7,116.3,103.5, got {text!r}")
    return values


def choice(*values: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in values:
            raise ValueError(f"expected one of {', '.join(values)}, got {text!r}")
        return value

    convert.__name__ = "choice"
    return convert


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def text(value: str) -> str:
    return value


def path(value: str) -> Path:
    return Path(value).expanduser()


def existing_file(value: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_file():
        raise ValueError(f"no such file: {value}")
    return p


def existing_dir(value: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_dir():
        raise ValueError(f"no such folder: {value}")
    return p


# --- options ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One flag: its default, how its text converts, help, and (``env``) its SEGSERVE_* variable.

    ``switch`` options are ``--x/--no-x``. ``shown`` is how the default reads in ``--help`` when
    ``str(default)`` would not say it well."""

    flag: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = text
    switch: bool = False
    env: str | None = ""  # "": SEGSERVE_<FLAG>; None: no variable
    shown: str | None = None
    metavar: str | None = None
    required: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def env_name(self) -> str | None:
        return ("SEGSERVE_" + self.dest.upper()) if self.env == "" else self.env

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.switch:
            return "on" if self.default else "off"
        return "unset" if self.default is None else str(self.default)

    def full_help(self) -> str:
        if self.required:
            return f"{self.help} (required)".replace("%", "%%")
        where = f"default: {self.shown_default()}" + (f"; env {self.env_name}" if self.env_name else "")
        return f"{self.help} ({where})".replace("%", "%%")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.switch:
            parser.add_argument(self.flag, action=_Switch, default=_FromEnv(self), help=self.full_help())
        else:
            parser.add_argument(
                self.flag,
                type=argparse_type(self.parse),
                default=None if self.required else _FromEnv(self),
                required=self.required,
                metavar=self.metavar or self._metavar(),
                help=self.full_help(),
            )

    def _metavar(self) -> str:
        name = getattr(self.parse, "__name__", "")
        if name == "port":
            return "PORT"
        if name == "integer":
            return "N"
        if name == "number":
            return "MS" if self.flag.endswith("-ms") else "SECONDS" if self.flag.endswith("-s") else "X"
        return self.dest.split("_")[-1].upper()

    def from_env(self) -> Any:
        """The value when the flag was not given: the variable's (converted), else the default."""
        name = self.env_name
        raw = os.environ.get(name) if name else None
        if raw is None or raw.strip() == "":
            return self.default
        try:
            return (boolean if self.switch else self.parse)(raw)
        except ValueError as exc:
            raise UsageError(
                f"environment variable {name}={raw!r}: {exc}; fix it or unset it ({self.flag} overrides it)"
            ) from None


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        option.add_to(parser)


def resolve_env(args: argparse.Namespace) -> argparse.Namespace:
    """Replace every flag not given on the command line by its variable's value or its default.

    Only the options of the subcommand that was parsed are in ``args``: nothing else is read."""
    for name, value in vars(args).items():
        if isinstance(value, _FromEnv):
            setattr(args, name, value.option.from_env())
    return args


class _FromEnv:
    """The argparse default of an Option: resolved after parsing, by ``resolve_env``."""

    def __init__(self, option: Option):
        self.option = option

    def __str__(self) -> str:
        return self.option.shown_default()


class _Switch(argparse.BooleanOptionalAction):
    """``--x/--no-x`` whose help is ours alone (Python < 3.13 appends a raw default to it)."""

    def __init__(self, option_strings, dest, default=None, help=None, **kwargs):
        super().__init__(option_strings, dest, default=default, help=None, **kwargs)
        self.help = help


def argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert
