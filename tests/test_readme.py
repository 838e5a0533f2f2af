"""The README as a reader uses it: every ```python block runs as written against a live server on the
shipped model (the address it names, localhost:50051, is swapped for the test server's), and its
install lines name extras and a wheel that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from segserve.edge.server import RunningServer
from segserve.settings import SHIPPED_MODEL
from servers import start_server

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
ADDRESS = "localhost:50051"
FRAME = ROOT / "tests" / "fixtures" / "camvid" / "val" / "images" / "0016E5_07959.jpg"


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[RunningServer]:
    running = start_server(SHIPPED_MODEL)
    yield running
    running.drain_and_stop(2.0)


@pytest.fixture
def reader_folder(tmp_path: Path) -> Path:
    """What the README says the current folder holds: a frame.jpg and a clone's demo/ folder."""
    shutil.copy(FRAME, tmp_path / "frame.jpg")
    (tmp_path / "demo").symlink_to(ROOT / "demo", target_is_directory=True)
    return tmp_path


def test_the_readme_has_python_blocks_that_use_the_server() -> None:
    assert len(PYTHON_BLOCKS) >= 2 and all(ADDRESS in block for block in PYTHON_BLOCKS)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index: int, shipped_server: RunningServer, reader_folder: Path) -> None:
    code = PYTHON_BLOCKS[index].replace(ADDRESS, f"127.0.0.1:{shipped_server.port}")
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=reader_folder
    )
    assert run.returncode == 0, f"README python block {index + 1}:\n{run.stderr}"


def test_install_lines_name_extras_and_a_wheel_that_exist() -> None:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    named = {e.strip() for group in re.findall(r"\.\[([a-z,]+)\]", README) for e in group.split(",")}
    assert named and named <= extras, named - extras
    for wheel in re.findall(r"segserve-[\w.]+-py3-none-any\.whl", README):
        assert wheel == f"segserve-{project['version']}-py3-none-any.whl"
    assert "pip install 'segserve[" not in README  # the package is not on an index under that name
